/**
 * img commit [-f fmt] [-b base] [-d] [-p] [-q] file
 * As qemu-img commit: what the image (and the layers above the base) hold is written into the
 * base — its backing file unless -b names a deeper one — and the image is emptied, unless -d
 * (implied by -b). Prints "Image committed." unless -q.
 */
import { Command } from 'commander';
import { commitImage } from '../snapshot/commit';
import { action } from './command';
import { formatArg, say } from './common';
import { progressReporter } from './progress';

export function register(program: Command): void {
  program
    .command('commit')
    .description('write the changes an image holds into its backing file')
    .option('-f <fmt>', 'image format (probed when absent)')
    .option('-b <base>', 'commit into this image of the backing chain (implies -d)')
    .option('-d', 'do not empty the image afterwards')
    .option('-p', 'show progress')
    .option('-q, --quiet', 'print nothing')
    .option('-t <cache>', 'accepted for compatibility')
    .option('-r <rate>', 'accepted for compatibility (no rate limit)')
    .argument('<file>')
    .action(
      action(1, async ({ opts, args }) => {
        const progress = opts.p && !opts.quiet ? progressReporter() : undefined;
        await commitImage({ file: args[0], format: formatArg(opts.f), base: opts.b as string | undefined, drop: !!opts.d, onProgress: progress?.update }).catch(
          (err) => {
            progress?.abandon();
            throw err;
          },
        );
        progress?.finish();
        say(opts, 'Image committed.\n');
      }),
    );
}
