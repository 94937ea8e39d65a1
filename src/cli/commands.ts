/** Every subcommand of `setokim`, one registration function per file. */
import type { Command } from 'commander';
import { registerDoctor } from './doctor.js';
import { registerExport } from './export.js';
import { registerRun } from './run.js';

export type RegisterCommand = (program: Command) => void;

export const commands: RegisterCommand[] = [registerDoctor, registerExport, registerRun];
