/**
 * The host side of a mount: running mount, umount, losetup and fusermount3, and reading
 * /proc/self/mountinfo. Commands run asynchronously: the FUSE server lives on this process's
 * event loop, and mounting or unmounting a filesystem over it needs that loop to answer.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { ImageError } from '../block/errors';

/** Runs a host command; its stdout, or an ImageError with its last stderr line. */
export function runHost(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', (e) => reject(new ImageError('UNSUPPORTED', `cannot run ${cmd}: ${e.message}`, { cause: e })));
    child.on('close', (code) => {
      if (code === 0) return resolve(out.trim());
      // The first line says what failed (mount adds a hint about dmesg after it).
      const line = err.trim().split('\n')[0] || `exit status ${code}`;
      reject(new ImageError('IO', `${cmd} ${args.join(' ')}: ${line}`));
    });
  });
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The filesystem type mounted at `dir` (the topmost mount there), or undefined. */
export function mountedType(dir: string): string | undefined {
  let type: string | undefined;
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    const sep = fields.indexOf('-');
    if (sep < 0 || unescape(fields[4]) !== dir) continue;
    type = fields[sep + 1];
  }
  return type;
}

export const isRoot = (): boolean => process.getuid?.() === 0;

/** Unmounts a FUSE filesystem (ours or a dead one): umount as root, fusermount3 otherwise. */
export async function unmountFuse(dir: string, lazy: boolean): Promise<void> {
  if (isRoot()) await runHost('umount', lazy ? ['-l', dir] : [dir]);
  else await runHost('fusermount3', lazy ? ['-u', '-z', dir] : ['-u', dir]);
}

/** Whether a loop device still has a backing file. */
export function loopAttached(loop: string): boolean {
  return fs.existsSync(`/sys/block/${loop.replace(/^\/dev\//, '')}/loop/backing_file`);
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
