/**
 * img snapshot [-f fmt] [-q] [-U] [--output=human|json] [-l | -a snapshot | -c snapshot | -d snapshot] file
 * As qemu-img snapshot: -l (the default) lists the snapshots, -c takes one, -a reverts the
 * disk to one (an id first, then a name), -d deletes one (by name only, as qemu-img).
 * Failures read "Could not <action> snapshot '<name>': <why>" and exit with status 1.
 */
import { Command } from 'commander';
import { ImageError } from '../block/errors';
import { Image } from '../block/image';
import { MAX_SNAPSHOT_NAME_BYTES } from '../formats/qcow2/snapshot-ops';
import { noSnapshots, SnapshotAction } from '../snapshot/snapshots';
import { action } from './command';
import { formatArg, openForWrite, outputFormat } from './common';
import { openImage } from '../formats/index';
import { qjson } from './qjson';
import { snapshotHeader, snapshotJson, snapshotLine } from './snapshot-list';

/** qemu-img copies the name into a 256-byte buffer: longer names are cut (here at a character boundary). */
export function truncateName(name: string): string {
  let out = name;
  while (Buffer.byteLength(out, 'utf8') > MAX_SNAPSHOT_NAME_BYTES) out = [...out].slice(0, -1).join('');
  return out;
}

/** Wraps a failure as qemu-img words it, keeping its code (and so its exit status). */
function couldNot(what: SnapshotAction, name: string, err: unknown): unknown {
  if (!(err instanceof ImageError)) return err;
  return new ImageError(err.code, `Could not ${what} snapshot '${name}': ${err.message}`, { field: err.field, value: err.value, cause: err });
}

export function register(program: Command): void {
  program
    .command('snapshot')
    .description('list, create, apply or delete internal snapshots')
    .option('-f <fmt>', 'image format (probed when absent)')
    .option('-l', 'list the snapshots (the default)')
    .option('-c <name>', 'create a snapshot')
    .option('-a <snapshot>', 'apply a snapshot (revert the disk to it)')
    .option('-d <snapshot>', 'delete a snapshot')
    .option('--output <format>', 'human or json (for -l)', 'human')
    .option('-q, --quiet', 'print nothing')
    .option('-U, --force-share', 'accepted for compatibility (img takes no locks)')
    .argument('<file>')
    .action(
      action(1, async ({ opts, args }) => {
        const output = outputFormat(opts.output);
        const chosen = (['l', 'c', 'a', 'd'] as const).filter((k) => opts[k] !== undefined);
        if (chosen.length > 1) throw new ImageError('INVALID_ARGUMENT', "Cannot mix '-l', '-a', '-c', '-d'");
        const mode = chosen[0] ?? 'l';
        const format = formatArg(opts.f);
        if (mode === 'l') {
          const image = await openImage(args[0], { format, readOnly: true, backingChain: false });
          try {
            const list = image.listSnapshots ? await image.listSnapshots() : [];
            if (output === 'json') process.stdout.write(qjson(list.map(snapshotJson)) + '\n');
            else if (list.length > 0) process.stdout.write(['Snapshot list:', snapshotHeader(), ...list.map(snapshotLine)].join('\n') + '\n');
          } finally {
            await image.close();
          }
          return;
        }
        const name = opts[mode] as string;
        const what: SnapshotAction = mode === 'c' ? 'create' : mode === 'a' ? 'apply' : 'delete';
        const image: Image = await openForWrite(args[0], format);
        try {
          const run = async (): Promise<void> => {
            if (mode === 'c') {
              if (!image.createSnapshot) throw noSnapshots(image, 'create');
              await image.createSnapshot(truncateName(name));
            } else if (mode === 'a') {
              if (!image.applySnapshot) throw noSnapshots(image, 'apply');
              await image.applySnapshot(name);
            } else {
              if (!image.deleteSnapshot) throw noSnapshots(image, 'delete');
              await image.deleteSnapshot(name);
            }
          };
          await run().catch((err) => {
            throw couldNot(what, name, err);
          });
        } finally {
          await image.close();
        }
      }),
    );
}
