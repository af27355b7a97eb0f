/**
 * `img unmount DIR`: undoes a mount made by `img mount`, whether its process still serves it
 * (which then flushes and closes the image and exits; this waits for that) or was killed (the
 * leftovers are cleaned up from the state file). A FUSE mount of img's with no state file is
 * unmounted too.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../block/errors';
import { undoMount } from './cleanup';
import { mountedType, sleep, unmountFuse } from './host';
import { readState, removeState } from './state';

const EXIT_WAIT_MS = 120_000;
const POLL_MS = 50;

/** Whether pid is a live (not zombie) process. */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) [ZX]/s.test(stat);
  } catch {
    return false;
  }
}

export async function unmountDir(target: string): Promise<void> {
  let dir: string;
  try {
    dir = fs.realpathSync(target);
  } catch {
    // A dead FUSE mount cannot be stat'ed (ENOTCONN): resolve its parent instead.
    const abs = path.resolve(target);
    try {
      dir = path.join(fs.realpathSync(path.dirname(abs)), path.basename(abs));
    } catch {
      throw new ImageError('NOT_FOUND', `${target} does not exist`);
    }
  }
  const state = readState(dir);
  if (!state) {
    if (mountedType(dir) !== 'fuse.img') throw new ImageError('INVALID_ARGUMENT', `${target} is not mounted by img`);
    await unmountFuse(dir, true);
    return;
  }
  const live = alive(state.pid);
  await undoMount(state, !live);
  if (live) {
    // The serving process flushes and closes the image once its FUSE connection ends.
    for (let waited = 0; alive(state.pid); waited += POLL_MS) {
      if (waited > EXIT_WAIT_MS) throw new ImageError('IO', `img (pid ${state.pid}) is still closing ${state.image}`);
      await sleep(POLL_MS);
    }
  }
  if (state.fuseDir !== dir) fs.rmSync(state.fuseDir, { recursive: true, force: true });
  removeState(dir);
}
