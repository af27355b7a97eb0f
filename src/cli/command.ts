/**
 * How every subcommand runs: its action is wrapped so that a failure prints one line,
 * `img: <message>` (the stack too with --debug), and exits with the status the subcommand
 * uses for errors (1 for most, 2 for compare, as qemu-img does).
 */
import { Command } from 'commander';
import { ImageError } from '../block/errors';

/** A subcommand's result: the exit status (0 when it returns nothing). */
export type ActionResult = number | void;

export interface ActionContext {
  /** The options of the subcommand, merged with the program's global ones. */
  opts: Record<string, unknown>;
  args: string[];
}

/** Prints an error as qemu-img would: one line on stderr, prefixed with the program name. */
export function reportError(err: unknown, debug: boolean): void {
  const message =
    err instanceof ImageError
      ? err.message
      : err instanceof Error
        ? `internal error: ${err.message}${debug ? '' : ' (run with --debug for details)'}`
        : String(err);
  process.stderr.write(`img: ${message.split('\n')[0]}\n`);
  if (debug && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
}

/**
 * Adapts `fn` to a commander action. `errorStatus` is the exit status for failures.
 * Output already queued on stdout is flushed before the process exits.
 */
export function action(errorStatus: number, fn: (ctx: ActionContext) => Promise<ActionResult>) {
  return async (...params: unknown[]): Promise<void> => {
    const cmd = params[params.length - 1] as Command;
    const opts = cmd.optsWithGlobals() as Record<string, unknown>;
    let status: number;
    try {
      status = (await fn({ opts, args: cmd.args })) ?? 0;
    } catch (err) {
      reportError(err, !!opts.debug);
      status = errorStatus;
    }
    process.exitCode = status;
  };
}
