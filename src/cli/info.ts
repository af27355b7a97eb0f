/** img info [-f fmt] [--output=human|json] [--backing-chain] file */
import { Command } from 'commander';
import { ImageInfo } from '../block/image';
import { chainInfo } from '../convert/chain';
import { openImage } from '../formats/index';
import { action } from './command';
import { formatArg, outputFormat } from './common';
import { qhuman, qjson, QValue } from './qjson';
import { snapshotHeader, snapshotJson, snapshotLine } from './snapshot-list';
import { sizeToStr } from './text';

const kebab = (key: string): string => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** Format-specific data with qemu's key spelling, whatever case the format used. */
function kebabKeys(value: unknown): QValue {
  if (Array.isArray(value)) return value.map(kebabKeys);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [kebab(k), kebabKeys(v)]));
  }
  return value as QValue;
}

/** An ImageInfo as qemu's QAPI ImageInfo object (keys in qemu's declaration order). */
export function infoJson(info: ImageInfo): { [key: string]: QValue | undefined } {
  return {
    filename: info.filename,
    format: info.format,
    'dirty-flag': info.dirtyFlag ?? false,
    'actual-size': info.actualSize >= 0 ? info.actualSize : undefined, // unknown for NBD exports, as in qemu
    'virtual-size': info.virtualSize,
    'cluster-size': info.clusterSize,
    'backing-filename': info.backingFilename,
    'full-backing-filename': info.fullBackingFilename,
    'backing-filename-format': info.backingFilenameFormat,
    snapshots: info.snapshots?.length ? info.snapshots.map(snapshotJson) : undefined,
    'format-specific': info.formatSpecific ? { type: info.formatSpecific.type, data: kebabKeys(info.formatSpecific.data) } : undefined,
  };
}

/** qemu-img info's human report of one image. */
export function infoHuman(info: ImageInfo): string {
  const out = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${sizeToStr(info.virtualSize)} (${info.virtualSize} bytes)`,
    `disk size: ${info.actualSize >= 0 ? sizeToStr(info.actualSize) : 'unavailable'}`,
  ];
  if (info.clusterSize) out.push(`cluster_size: ${info.clusterSize}`);
  if (info.dirtyFlag) out.push('cleanly shut down: no');
  if (info.backingFilename) {
    let line = `backing file: ${info.backingFilename}`;
    if (info.fullBackingFilename === undefined) line += ' (cannot determine actual path)';
    else if (info.fullBackingFilename !== info.backingFilename) line += ` (actual path: ${info.fullBackingFilename})`;
    out.push(line);
    if (info.backingFilenameFormat) out.push(`backing file format: ${info.backingFilenameFormat}`);
  }
  if (info.snapshots?.length) out.push('Snapshot list:', snapshotHeader(), ...info.snapshots.map(snapshotLine));
  let text = out.join('\n') + '\n';
  if (info.formatSpecific) {
    text += 'Format specific information:\n' + qhuman(kebabKeys(info.formatSpecific.data), 1);
  }
  return text;
}

export function register(program: Command): void {
  program
    .command('info')
    .description('show information about an image')
    .option('-f <fmt>', 'image format (probed when absent)')
    .option('--output <format>', 'human or json', 'human')
    .option('--backing-chain', 'show every image of the backing chain')
    .option('-U, --force-share', 'accepted for compatibility (img takes no locks)')
    .argument('<file>')
    .action(
      action(1, async ({ opts, args }) => {
        const output = outputFormat(opts.output);
        const chain = !!opts.backingChain;
        // As qemu-img: without --backing-chain a missing backing file does not stop info.
        const image = await openImage(args[0], { format: formatArg(opts.f), readOnly: true, backingChain: chain });
        try {
          const infos = await chainInfo(image, chain);
          if (output === 'json') {
            const values = infos.map(infoJson);
            process.stdout.write(qjson(chain ? values : values[0]) + '\n');
          } else process.stdout.write(infos.map(infoHuman).join('\n'));
        } finally {
          await image.close();
        }
      }),
    );
}
