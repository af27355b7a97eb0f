/** img create [-f fmt] [-o k=v,…] [-b backing [-F fmt]] [-u] [-q] file [size] */
import { Command } from 'commander';
import { ImageError } from '../block/errors';
import { CreateOptionSpec } from '../block/image';
import { backingSize } from '../convert/chain';
import { createImage, findFormat } from '../formats/index';
import { parseSize } from '../formats/options';
import { action } from './command';
import { backingArgs, collect, optionMap, say } from './common';

const TYPE_NAMES: Record<CreateOptionSpec['type'], string> = { size: 'size', number: 'num', bool: 'bool', string: 'str' };

/** The `-o help` listing, laid out like qemu-img's. */
export function optionHelp(format: string, specs: CreateOptionSpec[]): string {
  const lines = specs.map((o) => `  ${`${o.name}=<${TYPE_NAMES[o.type]}>`.padEnd(22)} - ${o.help}`);
  return `Supported ${format} options:\n${lines.join('\n')}\n\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n`;
}

export function isHelpRequest(options: Record<string, string>): boolean {
  return options.help === 'help' || options['?'] === 'help';
}

export function register(program: Command): void {
  program
    .command('create')
    .description('create a new image')
    .option('-f <fmt>', 'image format', 'raw')
    .option('-o <options>', 'format options (k=v,…; -o help lists them)', collect)
    .option('-b <backing>', 'backing file')
    .option('-F <fmt>', 'backing file format')
    .option('-u', 'unsafe: do not open the backing file (size is required)')
    .option('-q, --quiet', 'print nothing')
    .argument('[file]')
    .argument('[size]')
    .action(
      action(1, async ({ opts, args }) => {
        const format = findFormat(opts.f as string);
        const options = optionMap(opts.o);
        if (isHelpRequest(options)) {
          process.stdout.write(optionHelp(format.name, format.createOptions));
          return;
        }
        const [file, sizeText] = args;
        if (!file) throw new ImageError('INVALID_ARGUMENT', 'create: expecting a filename');
        const { backingFile: backing, backingFormat } = backingArgs(opts.b, opts.F, options, file);
        // As qemu-img: the backing file (and its chain) is opened unless -u, even when a size is given.
        const fromBacking = backing && !opts.u ? await backingSize(file, backing, backingFormat) : undefined;
        let size: number;
        if (sizeText !== undefined) size = parseSize(sizeText, 'image size');
        else if (options.size !== undefined) size = parseSize(options.size, 'image size');
        else if (fromBacking !== undefined) size = fromBacking;
        else throw new ImageError('INVALID_ARGUMENT', 'create: image size must be given (or taken from a backing file)', { file });
        delete options.size;
        const shown = Object.entries(options).map(([k, v]) => ` ${k}=${v}`).join('');
        const backingShown = backing ? ` backing_file=${backing} backing_fmt=${backingFormat}` : '';
        say(opts, `Formatting '${file}', fmt=${format.name}${shown} size=${size}${backingShown}\n`);
        await createImage(format.name, file, { size, options, backingFile: backing, backingFormat });
      }),
    );
}
