/** `setokim doctor`: what the install can do on this machine, as a user on a new Jetson checks it. */
import type { Command } from 'commander';
import { z } from 'zod';
import { capabilities, type Capabilities } from '../engine/native.js';
import { createDefaultRegistry } from '../engine/registry.js';
import { describeTarget, detectTarget, type Target } from '../engine/target.js';
import { group, parseCommandSettings, registerFlags, setting } from '../settings.js';

/**
 * `backends` lists the inference backends that can run here, best first (from the registry);
 * `target` is what engines and bundles for this device must be built for (src/engine/target.ts).
 */
export function formatDoctor(caps: Capabilities, backends: string[], target?: Target): string {
  const c = caps.compiled;
  const p = caps.present;
  const yes = (b: boolean, detail?: string | null) => (b ? `yes${detail ? ` (${detail})` : ''}` : 'no');
  const lines = [
    'setokim-edge doctor',
    '',
    'compiled in:',
    `  CUDA kernels       ${yes(c.cuda, c.cuda ? `nvcc ${c.cudaVersion}, sm ${c.cudaArchitectures}` : null)}`,
    `  TensorRT backend   ${yes(c.tensorrt, c.tensorrtVersion)}`,
    `  CPU SIMD           ${c.simd}`,
    '',
    'present now:',
    `  GPUs               ${p.gpus.length === 0 ? `none (${p.gpuProbeError ?? 'no device'})` : p.gpus.length}`,
    ...p.gpus.map(
      (g) => `    [${g.index}] ${g.name}, sm ${g.computeCapability}, ${(g.totalMemoryBytes / 2 ** 30).toFixed(1)} GiB`,
    ),
    `  CUDA driver        ${p.cudaDriverVersion > 0 ? p.cudaDriverVersion : 'none'}`,
    `  TensorRT library   ${p.tensorrtLibraryVersion ?? 'none'}`,
    '',
    `inference backends:  ${backends.length > 0 ? backends.join(', ') : 'none'}`,
    ...(target ? [`target:              ${describeTarget(target)}`] : []),
  ];
  return lines.join('\n');
}

/** The flag of `setokim doctor`, declared once (src/settings.ts). */
const doctorSettings = group({
  json: setting({ schema: z.boolean(), default: false, flag: '--json', help: 'print the capabilities as JSON' }),
});

export function registerDoctor(program: Command): void {
  const cmd = program
    .command('doctor')
    .description(
      'report what this install was built with (CUDA, TensorRT), what the machine has (GPUs) and its target',
    );
  registerFlags(cmd, doctorSettings).action(async (raw: Record<string, unknown>) => {
    const opts = parseCommandSettings(doctorSettings, raw, 'doctor');
    const caps = capabilities();
    const backends = await createDefaultRegistry().availableBackends();
    const target = await detectTarget({ capabilities: caps });
    const json = () => JSON.stringify({ ...caps, backends, target }, null, 2);
    const text = opts.json ? json() : formatDoctor(caps, backends, target);
    process.stdout.write(text + '\n');
  });
}
