/**
 * Guest disks for the FUSE tests: an ext4 filesystem with known files (mke2fs -d, no root
 * needed) in partition 1 of an MBR disk (with an extended partition and two logical ones) or
 * a GPT disk, other partitions filled with known bytes; and helpers to mount and look around.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IMG, prng, randomBytes, RunResult } from '../helpers';
import { writeAt } from '../convert/sample-disk';

const MiB = 1 << 20;
const SECTOR = 512;
export const DISK_SIZE = 48 * MiB;
export const FS_START = 1 * MiB;
export const FS_SIZE = 24 * MiB;

export interface GuestDisk {
  raw: string;
  /** Files in the guest filesystem: path inside it → contents. */
  files: Map<string, Buffer>;
  /** Partitions as Linux numbers them, in bytes. */
  partitions: { number: number; start: number; size: number }[];
}

// sfdisk scripts, in sectors. MBR: p1 ext4, p2 extended holding logical p5 and p6.
const TABLES = {
  dos: ['label: dos', 'start=2048, size=49152, type=83', 'start=51200, size=40960, type=5', 'start=53248, size=16384, type=83', 'start=71680, size=8192, type=83'],
  gpt: ['label: gpt', 'start=2048, size=49152, name=root', 'start=51200, size=16384, name=data', 'start=69632, size=8192, name=more'],
};

export function makeGuestDisk(dir: string, scheme: 'dos' | 'gpt', seed = 7): GuestDisk {
  const rand = prng(seed);
  const tree = path.join(dir, `tree-${scheme}`);
  const files = new Map<string, Buffer>([
    ['hello.txt', Buffer.from('hello from the guest\n')],
    ['sub/blob.bin', randomBytes(rand, 300_001)],
    ['sub/deeper/zeros.bin', Buffer.alloc(200_000)],
  ]);
  for (const [name, data] of files) {
    fs.mkdirSync(path.dirname(path.join(tree, name)), { recursive: true });
    fs.writeFileSync(path.join(tree, name), data);
  }
  const fsImage = path.join(dir, `fs-${scheme}.ext4`);
  execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, fsImage, `${FS_SIZE / 1024}k`]);
  const raw = path.join(dir, `disk-${scheme}.raw`);
  fs.writeFileSync(raw, '');
  fs.truncateSync(raw, DISK_SIZE);
  execFileSync('sfdisk', ['-q', raw], { input: TABLES[scheme].join('\n') + '\n' });
  writeAt(raw, FS_START, fs.readFileSync(fsImage));
  const dump = JSON.parse(execFileSync('sfdisk', ['--json', raw], { encoding: 'utf8' })) as {
    partitiontable: { partitions: { node: string; start: number; size: number; type: string }[] };
  };
  // The extended partition only holds the logical ones' tables: it is no file of its own.
  const partitions = dump.partitiontable.partitions.filter((p) => p.type !== '5').map((p) => ({
    number: Number(/(\d+)$/.exec(p.node)![1]),
    start: p.start * SECTOR,
    size: p.size * SECTOR,
  }));
  // Known bytes in the other partitions.
  for (const p of partitions) {
    if (p.start !== FS_START) writeAt(raw, p.start, randomBytes(rand, Math.min(p.size, 3 * MiB)));
  }
  return { raw, files, partitions };
}

/** img with its output, not throwing. */
export function img(...args: string[]): RunResult {
  const r = spawnSync(process.execPath, [IMG, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** img mount --daemon …; throws with img's message when it fails. */
export function mount(...args: string[]): string[] {
  const r = img('mount', '--daemon', ...args);
  if (r.status !== 0) throw new Error(`img mount ${args.join(' ')}: ${r.stderr}`);
  return r.stdout.trim().split('\n');
}

export function unmount(dir: string): void {
  const r = img('unmount', dir);
  if (r.status !== 0) throw new Error(`img unmount ${dir}: ${r.stderr}`);
}

/** Mount points at or under `dir`, from /proc/self/mountinfo. */
export function mountsUnder(dir: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p) => p !== undefined && (p === dir || p.startsWith(dir + '/')));
}

/** Loop devices whose backing file lies under `dir`. */
export function loopsUnder(dir: string): string[] {
  return fs
    .readdirSync('/sys/block')
    .filter((n) => n.startsWith('loop'))
    .filter((n) => {
      try {
        return fs.readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').startsWith(dir);
      } catch {
        return false;
      }
    });
}

/** The pid serving a mount, from img's state file. */
export function servingPid(dir: string): number {
  const stateDir = '/run/img';
  for (const f of fs.readdirSync(stateDir).filter((n) => n.endsWith('.json'))) {
    const s = JSON.parse(fs.readFileSync(path.join(stateDir, f), 'utf8')) as { dir: string; pid: number };
    if (s.dir === fs.realpathSync(dir)) return s.pid;
  }
  throw new Error(`no state for ${dir}`);
}

export const isRoot = process.getuid?.() === 0;
export const haveFuse = fs.existsSync('/dev/fuse');

export function bytesOf(file: string, start: number, size: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(size);
    fs.readSync(fd, b, 0, size, start);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}
