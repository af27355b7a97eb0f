/** img map [-f fmt] [--output=human|json] [--start-offset N] [--max-length N] file */
import { Command } from 'commander';
import { Extent } from '../block/device';
import { ImageError } from '../block/errors';
import { Image } from '../block/image';
import { openImage } from '../formats/index';
import { parseSize } from '../formats/options';
import { action } from './command';
import { formatArg, outputFormat } from './common';

/** One line of qemu-img map's output. */
export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** Block status is asked for this much at a time. */
const WINDOW = 1 << 30;

function entryOf(e: Extent): MapEntry {
  // Zeroes past the end of a short backing file: qemu-img map stops at the layer above it.
  if (e.pastBackingEnd) return { start: e.offset, length: e.length, depth: e.depth - 1, present: false, zero: true, data: false, offset: e.hostOffset };
  return {
    start: e.offset,
    length: e.length,
    depth: e.depth,
    present: e.kind !== 'unallocated',
    zero: e.kind !== 'data' || !!e.readsZero,
    data: e.kind === 'data',
    offset: e.compressed ? undefined : e.hostOffset,
  };
}

/** qemu-img map's merge rule: same flags and depth, and host offsets that continue each other. */
function continues(a: MapEntry, b: MapEntry): boolean {
  return (
    a.start + a.length === b.start &&
    a.depth === b.depth &&
    a.present === b.present &&
    a.zero === b.zero &&
    a.data === b.data &&
    (a.offset === undefined) === (b.offset === undefined) &&
    (a.offset === undefined || a.offset + a.length === b.offset)
  );
}

/** The image's map from `start` for `length` bytes, entries merged as qemu-img merges them. */
export async function mapImage(image: Image, start = 0, length = image.size - start): Promise<MapEntry[]> {
  const out: MapEntry[] = [];
  const end = Math.min(image.size, start + length);
  for (let w = start; w < end; w += WINDOW) {
    for (const e of await image.blockStatus(w, Math.min(WINDOW, end - w))) {
      const entry = entryOf(e);
      const last = out[out.length - 1];
      if (last && continues(last, entry)) last.length += entry.length;
      else out.push(entry);
    }
  }
  return out;
}

export function mapJson(entries: MapEntry[]): string {
  const lines = entries.map(
    (e) =>
      `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}` +
      (e.offset !== undefined ? `, "offset": ${e.offset}` : '') +
      '}',
  );
  return `[${lines.join(',\n')}]\n`;
}

const hex = (n: number): string => (n === 0 ? '0' : `0x${n.toString(16)}`);

/**
 * qemu-img map's human table: only data with a host mapping, with the file that holds it.
 * Data without one (compressed) ends the table with an error, as in qemu-img.
 */
export function mapHuman(entries: MapEntry[], image: Image): { text: string; error?: ImageError } {
  const layers: string[] = [];
  for (let l: Image | null = image; l; l = l.backing) layers.push(l.filename);
  let s = `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`;
  for (const e of entries) {
    if (!e.data) continue;
    if (e.offset === undefined) {
      return { text: s, error: new ImageError('UNSUPPORTED', 'File contains external, encrypted or compressed clusters.', { file: image.filename }) };
    }
    if (e.zero) continue;
    s += `${hex(e.start).padEnd(16)}${hex(e.length).padEnd(16)}${hex(e.offset).padEnd(16)}${layers[e.depth] ?? image.filename}\n`;
  }
  return { text: s };
}

export function register(program: Command): void {
  program
    .command('map')
    .description('show where the data of an image lies')
    .option('-f <fmt>', 'image format (probed when absent)')
    .option('--output <format>', 'human or json', 'human')
    .option('-s, --start-offset <offset>', 'start at this guest offset')
    .option('-l, --max-length <length>', 'map at most this many bytes')
    .option('-U, --force-share', 'accepted for compatibility (img takes no locks)')
    .argument('<file>')
    .action(
      action(1, async ({ opts, args }) => {
        const output = outputFormat(opts.output);
        const image = await openImage(args[0], { format: formatArg(opts.f), readOnly: true });
        try {
          const start = opts.startOffset !== undefined ? parseSize(opts.startOffset as string, 'start offset') : 0;
          const length = opts.maxLength !== undefined ? parseSize(opts.maxLength as string, 'max length') : undefined;
          if (start > image.size) throw new ImageError('INVALID_ARGUMENT', `start offset ${start} is past the end of the image`, { file: image.filename });
          const entries = await mapImage(image, start, length);
          if (output === 'json') {
            process.stdout.write(mapJson(entries));
            return;
          }
          const human = mapHuman(entries, image);
          process.stdout.write(human.text);
          if (human.error) throw human.error;
        } finally {
          await image.close();
        }
      }),
    );
}
