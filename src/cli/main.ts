/** Entry point of the img CLI (bin/img loads this): runs the program on process.argv. */
import * as os from 'node:os';
import { removeStagingFiles } from '../convert/target';
import { buildProgram, protectNegativeSize } from './program';

// Interrupted: no temporary target file is left behind; the exit status is the shell's 128+N.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    removeStagingFiles();
    process.exit(128 + os.constants.signals[signal]);
  });
}

buildProgram()
  .parseAsync(protectNegativeSize(process.argv))
  .catch((err) => {
    process.stderr.write(`img: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  });
