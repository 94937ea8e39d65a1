/**
 * The `setokim` command line. It only wires the layers together: each subcommand lives in its own
 * file beside this one and is listed in commands.ts.
 */
import { Command, CommanderError } from 'commander';
import { SetokimError, exitStatus } from '../errors.js';
import { packageVersion } from '../engine/native.js';
import { commands } from './commands.js';

export function buildProgram(): Command {
  const program = new Command('setokim')
    .description(
      'Edge runtime for Setokim, a multimodal LLM with the SeTok dynamic vision tokenizer.\n' +
        'Export model sets and TensorRT engines, serve image queries over MQTT, update fleets.',
    )
    .version(packageVersion())
    .showHelpAfterError('(add --help for usage)')
    // Before the subcommands are added, so they inherit it: help and usage errors return here
    // instead of calling process.exit inside commander.
    .exitOverride();
  for (const register of commands) register(program);
  return program;
}

/** Runs the CLI and returns the exit status; SetokimErrors print one clear line, never a stack. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    if (err instanceof SetokimError) {
      process.stderr.write(`setokim: error [${err.code}]: ${err.message}\n`);
      return exitStatus(err.code);
    }
    process.stderr.write(`setokim: internal error: ${(err as Error)?.stack ?? String(err)}\n`);
    return 1;
  }
}
