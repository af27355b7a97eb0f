/**
 * img rebase [-f fmt] [-F backing_fmt] [-u] [-p] [-q] [-U] -b backing file
 * As qemu-img rebase: the image gets a new backing file ('' for none) and keeps reading the
 * same; safe mode writes into it what differs between the old and the new backing file,
 * -u only changes the name. The new backing file is named relative to the image.
 */
import { Command } from 'commander';
import { ImageError } from '../block/errors';
import { rebaseImage } from '../snapshot/rebase';
import { action } from './command';
import { formatArg } from './common';
import { progressReporter } from './progress';

export function register(program: Command): void {
  program
    .command('rebase')
    .description("change an image's backing file (safe: its contents stay the same)")
    .option('-f <fmt>', 'image format (probed when absent)')
    .option('-b <backing>', "the new backing file ('' for none)")
    .option('-F <fmt>', 'format of the new backing file')
    .option('-u', 'unsafe: only change the name (the backing files must read alike)')
    .option('-p', 'show progress')
    .option('-q, --quiet', 'print nothing')
    .option('-t <cache>', 'accepted for compatibility')
    .option('-T <cache>', 'accepted for compatibility')
    .option('-U, --force-share', 'accepted for compatibility (img takes no locks)')
    .argument('<file>')
    .action(
      action(1, async ({ opts, args }) => {
        if (opts.b === undefined) throw new ImageError('INVALID_ARGUMENT', 'Must specify backing file (-b)');
        const progress = opts.p && !opts.quiet ? progressReporter() : undefined;
        await rebaseImage({
          file: args[0],
          format: formatArg(opts.f),
          backingFile: opts.b as string,
          backingFormat: formatArg(opts.F),
          unsafe: !!opts.u,
          onProgress: progress?.update,
        }).catch((err) => {
          progress?.abandon();
          throw err;
        });
        progress?.finish();
      }),
    );
}
