/**
 * Undoing a mount, by the process serving it or by `img unmount` for it: the guest filesystem
 * at DIR, the loop devices over the exported file, then the FUSE mount. Each step looks at
 * what is really there (mountinfo, /sys/block/loop*), so it can run after any failure or kill.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../block/errors';
import { mountedType, runHost, sleep, unmountFuse } from './host';
import { MountState } from './state';

const BUSY_RETRIES = 20;
const BUSY_DELAY_MS = 100;

/** Loop devices whose backing file is `file`. */
function loopsOver(file: string): string[] {
  let names: string[];
  try {
    names = fs.readdirSync('/sys/block').filter((n) => n.startsWith('loop'));
  } catch {
    return [];
  }
  return names
    .filter((n) => {
      try {
        return fs.readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim() === file;
      } catch {
        return false;
      }
    })
    .map((n) => `/dev/${n}`);
}

/**
 * Undoes `state`'s mount. `stale`: the serving process is gone, so a busy mount point is
 * detached lazily; otherwise a busy DIR is an error, and nothing is torn down under its users.
 */
export async function undoMount(state: MountState, stale: boolean): Promise<void> {
  const { dir, fuseDir } = state;
  if (fuseDir !== dir) {
    if (mountedType(dir) !== undefined) {
      await runHost('umount', [dir]).catch(async (err) => {
        if (!stale) throw new ImageError('IO', `cannot unmount ${dir}: ${(err as Error).message.split(': ').pop()}`);
        await runHost('umount', ['-l', dir]);
      });
    }
    for (const loop of loopsOver(path.join(fuseDir, 'disk'))) await runHost('losetup', ['-d', loop]).catch(() => undefined);
  }
  if (!mountedType(fuseDir)?.startsWith('fuse')) return;
  // A detached loop device lets go of the file a moment later.
  for (let i = 0; ; i++) {
    try {
      await unmountFuse(fuseDir, false);
      return;
    } catch (err) {
      if (fuseDir === dir && !stale) throw new ImageError('IO', `cannot unmount ${dir}: ${(err as Error).message.split(': ').pop()}`);
      if (i >= BUSY_RETRIES) break;
      await sleep(BUSY_DELAY_MS);
    }
  }
  await unmountFuse(fuseDir, true);
}
