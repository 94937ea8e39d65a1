/**
 * Environment for the node child processes a test starts (the CLI through tsx or dist/).
 * tap records coverage in every node process it can reach (@tapjs/processinfo, through
 * NODE_OPTIONS), and c8 merges V8 coverage by file URL: a child whose transpilation of src/*.ts
 * differs from tap's ts-node (tsx's esbuild) garbles the merged report, which then loses most of
 * the suite's coverage, depending on the order the files are read. Children therefore record
 * none (processinfo's documented switch); what they exercise is covered in-process.
 * scripts/check-coverage.mjs fails by name if a mixed transpilation gets in again.
 */
export function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { ...process.env, ...extra, _TAPJS_PROCESSINFO_COVERAGE_: '0' };
}
