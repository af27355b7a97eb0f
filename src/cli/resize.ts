/** img resize [-f fmt] [--shrink] [--preallocation=mode] [-q] file [+|-]size */
import { Command } from 'commander';
import { ImageError } from '../block/errors';
import { parseSize } from '../formats/options';
import { action } from './command';
import { formatArg, openForWrite, say } from './common';

/** The new size from "N", "+N" or "-N" relative to the current one. */
export function resizeTarget(text: string, current: number): number {
  const sign = text[0] === '+' || text[0] === '-' ? text[0] : '';
  const n = parseSize(sign ? text.slice(1) : text, 'size');
  const size = sign === '+' ? current + n : sign === '-' ? current - n : n;
  if (size < 0) throw new ImageError('INVALID_ARGUMENT', `new size ${size} is negative`);
  return size;
}

export function register(program: Command): void {
  program
    .command('resize')
    .description('grow or shrink an image')
    .option('-f <fmt>', 'image format (probed when absent)')
    .option('--shrink', 'allow shrinking (data past the new end is lost)')
    .option('--preallocation <mode>', 'off, metadata, falloc or full, for the new part')
    .option('-q, --quiet', 'print nothing')
    .argument('<file>')
    .argument('<size>')
    .action(
      action(1, async ({ opts, args }) => {
        const image = await openForWrite(args[0], formatArg(opts.f));
        try {
          if (!image.resize) throw new ImageError('UNSUPPORTED', `the ${image.format} format does not support resizing`, { file: image.filename });
          const size = resizeTarget(args[1], image.size);
          if (size < image.size && !opts.shrink) {
            process.stderr.write(
              "img: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.\n",
            );
            throw new ImageError('INVALID_ARGUMENT', 'Use the --shrink option to perform a shrink operation.');
          }
          await image.resize(size, { shrink: !!opts.shrink, preallocation: opts.preallocation as string | undefined });
          await image.flush();
          say(opts, 'Image resized.\n');
        } finally {
          await image.close();
        }
      }),
    );
}
