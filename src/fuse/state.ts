/**
 * What a running `img mount` has set up, recorded so that `img unmount` can undo it even after
 * the mounting process was killed: one JSON file per mount point, under /run/img as root, else
 * $XDG_RUNTIME_DIR/img (or the temp directory).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isRoot } from './host';

export interface MountState {
  /** The mount point, absolute and resolved. */
  dir: string;
  /** The img process serving the mount. */
  pid: number;
  image: string;
  /** Where the FUSE filesystem is mounted: dir itself, or a private directory for --fs. */
  fuseDir: string;
  /** --fs: the loop device over the exported file, once attached. */
  loop?: string;
  /** --fs: the guest filesystem is mounted at dir. */
  fsMounted?: boolean;
}

export function stateDir(): string {
  if (isRoot()) return '/run/img';
  const runtime = process.env.XDG_RUNTIME_DIR;
  return runtime ? path.join(runtime, 'img') : path.join(os.tmpdir(), `img-${process.getuid?.() ?? 0}`);
}

function stateFile(dir: string): string {
  return path.join(stateDir(), `mount-${createHash('sha256').update(dir).digest('hex').slice(0, 20)}.json`);
}

export function writeState(state: MountState): void {
  fs.mkdirSync(stateDir(), { recursive: true, mode: 0o700 });
  const file = stateFile(state.dir);
  fs.writeFileSync(`${file}.tmp`, JSON.stringify(state));
  fs.renameSync(`${file}.tmp`, file);
}

export function readState(dir: string): MountState | undefined {
  try {
    const state = JSON.parse(fs.readFileSync(stateFile(dir), 'utf8')) as MountState;
    return state.dir === dir && Number.isInteger(state.pid) ? state : undefined;
  } catch {
    return undefined;
  }
}

export function removeState(dir: string): void {
  fs.rmSync(stateFile(dir), { force: true });
}
