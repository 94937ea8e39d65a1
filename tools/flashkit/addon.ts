/**
 * The native addon for the kit's architecture. On this machine's own architecture it is the addon
 * `npm ci` built (build/Release/setokim.node, with the CUDA tier when nvcc was found). For arm64 on
 * an x86 machine it is cross-compiled with the aarch64 toolchain (cmake/toolchains/, as
 * scripts/check-aarch64.sh does for the CPU tier) into build/kit-arm64: CPU tier only, since the
 * toolchain file turns CUDA and TensorRT off (no cross CUDA is used; a kit built on a Jetson
 * carries its CUDA tier). libstdc++ stays shared: the package Depends on the libstdc++6 it needs.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ErrorCodes, SetokimError } from '../../src/errors.js';
import { ARCHES, hostArch, type DebArch } from './layout.js';

const run = promisify(execFile);

export interface AddonBuild {
  file: string;
  how: string;
}

async function need(tool: string, apt: string): Promise<void> {
  try {
    await run('which', [tool]);
  } catch {
    throw new SetokimError(
      ErrorCodes.KIT_BUILD_FAILED,
      `${tool} is not installed (apt-get install -y ${apt}); it is needed for this kit`,
    );
  }
}

/** The tools building the addon for `arch` needs; checked before the kit writes anything. */
export async function checkAddonTools(root: string, arch: DebArch): Promise<void> {
  if (arch === hostArch()) {
    if (!existsSync(join(root, 'build', 'Release', 'setokim.node'))) {
      throw new SetokimError(
        ErrorCodes.KIT_BUILD_FAILED,
        `the native addon is not built (${join(root, 'build/Release/setokim.node')}); run \`npm ci\` or \`npm run ` +
          `build:native\` first`,
      );
    }
    return;
  }
  if (arch !== 'arm64' || hostArch() !== 'amd64') {
    throw new SetokimError(
      ErrorCodes.KIT_BUILD_FAILED,
      `a ${arch} kit is built on an ${arch} machine or, for arm64, cross-compiled on x86-64; ` +
        `this machine is ${process.arch}`,
    );
  }
  await need(`${ARCHES.arm64.triple}-g++`, 'g++-aarch64-linux-gnu');
  await need('cmake', 'cmake');
}

async function napiInclude(root: string): Promise<string> {
  for (const d of [join(root, 'node_modules', 'node-api-headers', 'include'), '/usr/include/node']) {
    if (existsSync(join(d, 'node_api.h'))) return d;
  }
  throw new SetokimError(
    ErrorCodes.KIT_BUILD_FAILED,
    'no Node-API headers (node_modules/node-api-headers: run `npm ci`)',
  );
}

async function cmake(args: string[], what: string): Promise<void> {
  try {
    await run('cmake', args, { maxBuffer: 64 << 20 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    const tail = `${e.stdout ?? ''}${e.stderr ?? ''}`.trim().split('\n').slice(-6).join('\n');
    throw new SetokimError(ErrorCodes.KIT_BUILD_FAILED, `${what} failed:\n${tail || e.message}`);
  }
}

/** Builds (or takes) the addon for `arch` and copies it, stripped, to `dest`. */
export async function stageAddon(root: string, arch: DebArch, dest: string): Promise<AddonBuild> {
  let file: string;
  let how: string;
  if (arch === hostArch()) {
    file = join(root, 'build', 'Release', 'setokim.node');
    how = 'the addon npm ci built on this machine';
  } else {
    const dir = join(root, 'build', `kit-${arch}`);
    await cmake(
      [
        '-S',
        root,
        '-B',
        dir,
        `-DCMAKE_TOOLCHAIN_FILE=${join(root, 'cmake', 'toolchains', 'aarch64-linux-gnu.cmake')}`,
        '-DCMAKE_BUILD_TYPE=Release',
        // What cmake-js passes (CMakeLists.txt builds the addon when CMAKE_JS_VERSION is set).
        '-DCMAKE_JS_VERSION=flash-kit',
        `-DCMAKE_JS_INC=${await napiInclude(root)}`,
        `-DCMAKE_LIBRARY_OUTPUT_DIRECTORY=${join(dir, 'Release')}`,
        // libstdc++ and libgcc stay shared: linked in statically they bring glibc 2.36's arc4random and
        // 2.35's _dl_find_object with them, which JetPack 6 (Ubuntu 22.04, glibc 2.35) lacks.
        '-DCMAKE_SHARED_LINKER_FLAGS=',
        '-DSETOKIM_CUDA=OFF',
        '-DSETOKIM_TENSORRT=OFF',
      ],
      'configuring the aarch64 addon build',
    );
    await cmake(
      ['--build', dir, '--target', 'setokim_addon', '-j', String(Math.max(1, cpus().length))],
      'building the aarch64 addon',
    );
    file = join(dir, 'Release', 'setokim.node');
    how = `cross-compiled with ${ARCHES[arch].triple}-g++ (CPU tier: no cross CUDA)`;
  }
  await copyFile(file, dest);
  const strip = arch === hostArch() ? 'strip' : `${ARCHES[arch].triple}-strip`;
  try {
    await run(strip, ['--strip-unneeded', '--remove-section=.comment', '--remove-section=.note', dest]);
  } catch (err) {
    throw new SetokimError(ErrorCodes.KIT_BUILD_FAILED, `${strip} failed on the addon: ${(err as Error).message}`);
  }
  return { file, how };
}
