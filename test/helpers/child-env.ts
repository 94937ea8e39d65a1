/**
 * Environment for child processes that load the TypeScript sources through tsx. tsx (esbuild)
 * transpiles src/*.ts differently from tap's ts-node, and V8 coverage of one file URL in two
 * transpilations cannot be merged: the report then loses most of the suite's coverage. Such
 * children therefore run without NODE_V8_COVERAGE; what they exercise is covered in-process.
 */
export function tsxChildEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete env.NODE_V8_COVERAGE;
  return env;
}
