#!/usr/bin/env bash
# The formatter and linter checks CI runs: ESLint (TypeScript/JavaScript rules, no literal error
# codes), Prettier (TypeScript/JavaScript/JSON, width 120) and clang-format (native/, width 120).
# `bash scripts/lint.sh --fix` rewrites the files instead of checking them.
set -euo pipefail
cd "$(dirname "$0")/.."
fix=${1:-}
native=$(git ls-files 'native/*.h' 'native/*.cc' 'native/*.cu' 'native/*.inc')
if [ "$fix" = "--fix" ]; then
  npx eslint --fix .
  npx prettier --write --log-level warn .
  clang-format -i $native
  exit 0
fi
npx eslint .
npx prettier --check --log-level warn .
clang-format --dry-run --Werror $native
echo "lint: eslint, prettier and clang-format clean"
