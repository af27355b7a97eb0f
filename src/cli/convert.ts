/**
 * img convert [-f fmt] [-O fmt] [-o opts] [-c] [-S size] [-n] [-p] [-q] [-l snapshot]
 *             [-B backing [-F fmt]] [-m n] src dst
 */
import { Command } from 'commander';
import { ImageError } from '../block/errors';
import { convertImage } from '../convert/convert';
import { findFormat } from '../formats/index';
import { parseOptionList, parseSize } from '../formats/options';
import { SnapshotSelector } from '../block/image';
import { action } from './command';
import { backingArgs, collect, formatArg, optionMap } from './common';
import { isHelpRequest, optionHelp } from './create';
import { progressReporter } from './progress';

const SECTOR = 512;
const MAX_SPARSE = 16 << 20;
const MAX_IN_FLIGHT = 64;

/** -S: a multiple of 512 up to 16 MiB, 0 for none (as qemu-img). */
function sparseArg(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  const n = parseSize(value as string, 'sparse size');
  if (n % SECTOR !== 0 || n > MAX_SPARSE) {
    throw new ImageError(
      'INVALID_ARGUMENT',
      `invalid sparse size '${value}': valid sizes are multiples of ${SECTOR} up to ${MAX_SPARSE}; 0 disables sparse detection`,
    );
  }
  return n;
}

function inFlightArg(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > MAX_IN_FLIGHT) {
    throw new ImageError('INVALID_ARGUMENT', `invalid number of requests in flight '${value}': expected 1 to ${MAX_IN_FLIGHT}`);
  }
  return n;
}

/**
 * -l takes "snapshot.id=ID[,snapshot.name=NAME]" (every field given must match, as qemu-img's
 * bdrv_snapshot_load_tmp) or a bare id or name (an id first, then a name).
 */
export function snapshotArg(value: unknown): SnapshotSelector | undefined {
  if (value === undefined) return undefined;
  const text = value as string;
  if (!text.startsWith('snapshot.')) return text;
  const sel: { id?: string; name?: string } = {};
  for (const [k, v] of Object.entries(parseOptionList(text))) {
    if (k === 'snapshot.id') sel.id = v;
    else if (k === 'snapshot.name') sel.name = v;
    else throw new ImageError('INVALID_ARGUMENT', `Failed in parsing snapshot param '${text}': unknown parameter '${k}'`);
  }
  return sel;
}

export function register(program: Command): void {
  program
    .command('convert')
    .description('copy an image into a new image of any format, skipping holes and zeroes')
    .option('-f <fmt>', 'source format (probed when absent)')
    .option('-O <fmt>', 'target format', 'raw')
    .option('-o <options>', 'target format options (k=v,…; -o help lists them)', collect)
    .option('-c', 'compress the target (formats that support it)')
    .option('-S <size>', 'shortest run of zeroes left unwritten (0: write everything)')
    .option('-n', 'do not create the target: write into the existing image')
    .option('-p', 'show progress')
    .option('-q, --quiet', 'print nothing')
    .option('-l <snapshot>', 'convert this internal snapshot of the source')
    .option('-B <backing>', 'backing file of the target: only what differs from it is written')
    .option('-F <fmt>', 'format of the backing file given with -B')
    .option('-m <n>', 'chunks in flight (default 8, 2 with -c)')
    .option('-W', 'accepted for compatibility (writes may complete out of order anyway)')
    .option('-U, --force-share', 'accepted for compatibility (img takes no locks)')
    .argument('[source]')
    .argument('[target]')
    .action(
      action(1, async ({ opts, args }) => {
        const targetFormat = findFormat(opts.O as string).name;
        const options = optionMap(opts.o);
        if (isHelpRequest(options)) {
          process.stdout.write(optionHelp(targetFormat, findFormat(targetFormat).createOptions));
          return;
        }
        const [source, target] = args;
        if (!source || !target) throw new ImageError('INVALID_ARGUMENT', 'convert: expecting a source and a target filename');
        const { backingFile, backingFormat } = backingArgs(opts.B, opts.F, options, target);
        if (opts.n && Object.keys(options).length > 0) throw new ImageError('INVALID_ARGUMENT', '-o has no effect with -n (the target is not created)');
        const progress = opts.p && !opts.quiet ? progressReporter() : undefined;
        const converting = convertImage({
          source,
          sourceFormat: formatArg(opts.f),
          target,
          targetFormat,
          options,
          noCreate: !!opts.n,
          snapshot: snapshotArg(opts.l),
          backingFile,
          backingFormat,
          compress: !!opts.c,
          sparseSize: sparseArg(opts.S),
          inFlight: inFlightArg(opts.m),
          onProgress: progress?.update,
        });
        await converting.catch((err) => {
          progress?.abandon();
          throw err;
        });
        progress?.finish();
      }),
    );
}
