/** img amend [-f fmt] [-q] -o options file */
import { Command } from 'commander';
import { ImageError } from '../block/errors';
import { findFormat } from '../formats/index';
import { action } from './command';
import { collect, formatArg, openForWrite, optionMap } from './common';
import { isHelpRequest, optionHelp } from './create';

export function register(program: Command): void {
  program
    .command('amend')
    .description("change an image's format options (compat, refcount_bits, lazy_refcounts, backing, …)")
    .option('-f <fmt>', 'image format (probed when absent)')
    .option('-o <options>', 'options to change (k=v,…; -o help lists them)', collect)
    .option('-q, --quiet', 'print nothing')
    .option('--force', 'accepted for compatibility')
    .argument('[file]')
    .action(
      action(1, async ({ opts, args }) => {
        const options = optionMap(opts.o);
        if (Object.keys(options).length === 0) throw new ImageError('INVALID_ARGUMENT', 'Must specify options (-o)');
        if (isHelpRequest(options) && opts.f !== undefined) {
          const format = findFormat(opts.f as string);
          process.stdout.write(optionHelp(format.name, format.createOptions));
          return;
        }
        if (args[0] === undefined) throw new ImageError('INVALID_ARGUMENT', 'amend: expecting a filename');
        const image = await openForWrite(args[0], formatArg(opts.f));
        try {
          if (isHelpRequest(options)) {
            process.stdout.write(optionHelp(image.format, findFormat(image.format).createOptions));
            return;
          }
          if (!image.amend) throw new ImageError('UNSUPPORTED', `Format driver '${image.format}' does not support option amendment`, { file: image.filename });
          await image.amend(options);
          await image.flush();
        } finally {
          await image.close();
        }
      }),
    );
}
