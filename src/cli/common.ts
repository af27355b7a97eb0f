/** Option parsing and image opening shared by the subcommands. */
import * as v8 from 'node:v8';
import { ImageError } from '../block/errors';
import { Image } from '../block/image';
import { findFormat, openImage } from '../formats/index';
import { parseOptionList } from '../formats/options';
import { RawImage } from '../formats/raw/raw';

export type OutputFormat = 'human' | 'json';

/** commander collector for repeatable options (-o a=1 -o b=2). */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Merges every -o given into one option map. */
export function optionMap(list: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const text of (list as string[] | undefined) ?? []) Object.assign(out, parseOptionList(text));
  return out;
}

export function outputFormat(value: unknown): OutputFormat {
  const v = (value as string | undefined) ?? 'human';
  if (v !== 'human' && v !== 'json') throw new ImageError('INVALID_ARGUMENT', `--output must be human or json, not '${v}'`);
  return v;
}

/** Checks a format name early, so a typo is reported before any file is touched. */
export function formatArg(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  return findFormat(value as string).name;
}

/** qemu's warning when a write-opened image's format was guessed as raw. */
function probedRawWarning(filename: string): string {
  return (
    `WARNING: Image format was not specified for '${filename}' and probing guessed raw.\n` +
    '         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n' +
    "         Specify the 'raw' format explicitly to remove the restrictions.\n"
  );
}

/** Opens an image to modify it, warning as qemu does when its format was guessed as raw. */
export async function openForWrite(filename: string, format: string | undefined): Promise<Image> {
  const image = await openImage(filename, { format, readOnly: false });
  if (image instanceof RawImage && image.probed) process.stderr.write(probedRawWarning(filename));
  return image;
}

/** Prints unless -q was given. */
export function say(opts: Record<string, unknown>, text: string): void {
  if (!opts.quiet) process.stdout.write(text);
}

/**
 * The backing file and its format, from -b/-B and -F or from -o backing_file=,backing_fmt=
 * (removed from `options`). A backing file needs its format: img never probes one.
 */
export function backingArgs(
  file: unknown,
  format: unknown,
  options: Record<string, string>,
  target: string,
): { backingFile?: string; backingFormat?: string } {
  const backingFile = (file as string | undefined) ?? options.backing_file;
  const backingFormat = (format as string | undefined) ?? options.backing_fmt;
  delete options.backing_file;
  delete options.backing_fmt;
  if (backingFile && !backingFormat) throw new ImageError('INVALID_ARGUMENT', 'Backing file specified without backing format', { file: target });
  return { backingFile, backingFormat: formatArg(backingFormat) };
}

/**
 * For the commands that serve (NBD, FUSE). A server runs the same few request handlers
 * thousands of times a second, so V8 sends them to TurboFan within its first half second:
 * 0.3 s of CPU on the background threads in a 0.8 s bench/nbd.sh write run, CPU the copy
 * itself needed on a 2-core machine. A tier-up budget 30 times V8's default (67584) leaves
 * those compiles to servers that keep running, which still get the optimized code (steady
 * reads are as fast).
 */
export function tuneForServing(): void {
  v8.setFlagsFromString('--interrupt-budget=2000000');
}
