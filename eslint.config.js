// ESLint for the TypeScript and JavaScript sources (npm run lint; CI runs it). Style is prettier's job.
import { readFileSync } from 'node:fs';
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

// Error codes are named through ErrorCodes.X, never spelled as string literals (src/errors.ts
// holds the one table); the list is read from that table so a new code is covered at once.
const codes = [
  ...readFileSync(new URL('./src/errors.ts', import.meta.url), 'utf8').matchAll(/^ {2}([A-Z_]+): \{ exit/gm),
].map((m) => m[1]);

export default tseslint.config(
  { ignores: ['build/', 'dist/', 'node_modules/', '.tap/', 'coverage/', 'models/', 'out/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: globals.node },
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' },
      ],
    },
  },
  // Tests tamper with raw JSON (manifests, bundles, tokenizers) on purpose: `any` is their tool there.
  { files: ['test/**/*.ts'], rules: { '@typescript-eslint/no-explicit-any': 'off' } },
  {
    files: ['src/**/*.ts', 'tools/**/*.ts'],
    ignores: ['src/errors.ts'],
    rules: {
      'no-restricted-syntax': [
        'error',
        {
          selector: `Literal[value=/^(${codes.join('|')})$/]`,
          message: 'Name error codes as ErrorCodes.X (src/errors.ts), not as string literals.',
        },
      ],
    },
  },
);
