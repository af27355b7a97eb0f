/** img measure [--output=human|json] [-O fmt] [-o opts] [--size N | [-f fmt] [-l snapshot] file] */
import { Command } from 'commander';
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { openSnapshotOf } from '../convert/convert';
import { findFormat, openImage } from '../formats/index';
import { parseSize } from '../formats/options';
import { action } from './command';
import { collect, formatArg, optionMap, outputFormat } from './common';
import { snapshotArg } from './convert';
import { qjson } from './qjson';

export function register(program: Command): void {
  program
    .command('measure')
    .description('how much host space an image of a format needs')
    .option('-O <fmt>', 'format of the image to measure for', 'raw')
    .option('-o <options>', 'its creation options', collect)
    .option('--size <size>', 'measure an empty image of this size')
    .option('-f <fmt>', 'format of the source image (probed when absent)')
    .option('-l <snapshot>', 'measure this internal snapshot of the source')
    .option('--output <format>', 'human or json', 'human')
    .option('-U, --force-share', 'accepted for compatibility (img takes no locks)')
    .argument('[file]')
    .action(
      action(1, async ({ opts, args }) => {
        const output = outputFormat(opts.output);
        const format = findFormat(opts.O as string);
        if (!format.measure) throw new ImageError('UNSUPPORTED', `the ${format.name} format does not support measuring`);
        const options = optionMap(opts.o);
        const file = args[0];
        if (file === undefined && opts.size === undefined) throw new ImageError('INVALID_ARGUMENT', 'Either --size N or one filename must be specified.');
        if (file !== undefined && opts.size !== undefined) throw new ImageError('INVALID_ARGUMENT', '--size N cannot be used together with a filename.');
        let result;
        if (file === undefined) {
          result = await format.measure({ size: parseSize(opts.size as string, 'size'), options });
        } else {
          const image = await openImage(file, { format: formatArg(opts.f), readOnly: true });
          let source: BlockDevice = image;
          try {
            if (opts.l !== undefined) {
              source = await openSnapshotOf(image, snapshotArg(opts.l)!);
            }
            result = await format.measure({ size: source.size, options, source });
          } finally {
            if (source !== image) await source.close();
            await image.close();
          }
        }
        if (output === 'json') {
          process.stdout.write(qjson({ required: result.required, 'fully-allocated': result.fullyAllocated, bitmaps: result.bitmaps }) + '\n');
        } else {
          const bitmaps = result.bitmaps !== undefined ? `bitmaps size: ${result.bitmaps}\n` : '';
          process.stdout.write(`required size: ${result.required}\nfully allocated size: ${result.fullyAllocated}\n${bitmaps}`);
        }
      }),
    );
}
