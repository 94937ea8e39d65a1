/** Every subcommand of `setokim`, one registration function per file. */
import type { Command } from 'commander';
import { registerAgent } from './agent.js';
import { registerBundle } from './bundle.js';
import { registerFleet } from './fleet.js';
import { registerDemo } from './demo.js';
import { registerDoctor } from './doctor.js';
import { registerExport } from './export.js';
import { registerFlashKit } from './flashkit.js';
import { registerQuery } from './query.js';
import { registerRun } from './run.js';
import { registerWatch } from './watch.js';

export type RegisterCommand = (program: Command) => void;

export const commands: RegisterCommand[] = [
  registerDoctor,
  registerExport,
  registerRun,
  registerWatch,
  registerAgent,
  registerQuery,
  registerDemo,
  registerBundle,
  registerFleet,
  registerFlashKit,
];
