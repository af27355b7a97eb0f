/**
 * img demo: the main job in a few readable steps, in a temporary directory — make a raw disk
 * with real content (files from /usr, random bytes, written zeroes, holes), convert it to
 * qcow2 and to zstd-compressed qcow2, then info, check, map and compare; take an internal
 * snapshot and an overlay; serve the image over NBD and read it back through the socket;
 * qemu-img checks the results too when it is installed; last, boot a qcow2 holding an ext4
 * filesystem and read a file inside the guest.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { ImageError } from '../block/errors';
import { openImage } from '../formats/index';
import { action } from './command';
import { sizeToStr } from './text';

const MiB = 1 << 20;
const DISK_SIZE = 256 * MiB;
const FILES_AT = 1 * MiB;
const FILES_BYTES = 24 * MiB;
const RANDOM_AT = 96 * MiB;
const RANDOM_BYTES = 8 * MiB;
const ZEROES_AT = 160 * MiB;
const ZEROES_BYTES = 16 * MiB;
const IMG = path.resolve(__dirname, '..', '..', '..', 'bin', 'img');

/** Up to `limit` bytes of regular files under `dir`, concatenated. */
function filesFrom(dir: string, limit: number): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (total >= limit) return;
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        const data = fs.readFileSync(p).subarray(0, limit - total);
        parts.push(data);
        total += data.length;
      }
    }
  };
  walk(dir);
  return Buffer.concat(parts);
}

async function makeDisk(file: string): Promise<number> {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, DISK_SIZE);
  const disk = await openImage(file, { format: 'raw' });
  try {
    const files = filesFrom('/usr/lib', FILES_BYTES);
    await disk.write(FILES_AT, files);
    await disk.write(RANDOM_AT, randomBytes(RANDOM_BYTES));
    await disk.write(ZEROES_AT, Buffer.alloc(ZEROES_BYTES));
    await disk.flush();
    return files.length;
  } finally {
    await disk.close();
  }
}

function hasQemuImg(): boolean {
  return spawnSync('qemu-img', ['--version']).status === 0;
}

/** Runs a command, prints it and its output indented; fails the demo if it fails. */
function step(dir: string, cmd: string, args: string[], note = ''): string {
  const started = process.hrtime.bigint();
  const r = spawnSync(cmd === 'img' ? process.execPath : cmd, cmd === 'img' ? [IMG, ...args] : args, { cwd: dir, encoding: 'utf8' });
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  process.stdout.write(`$ ${cmd} ${args.join(' ')}   (${secs.toFixed(2)} s${note})\n`);
  const out = `${r.stdout}${r.stderr}`.trimEnd();
  if (out) process.stdout.write(out.replace(/^/gm, '    ') + '\n');
  if (r.status !== 0) throw new ImageError('IO', `demo step failed (exit ${r.status}): ${cmd} ${args.join(' ')}`);
  return r.stdout;
}

/** Serves disk.qcow2 on a unix socket for the duration of `body`, then stops the server with SIGTERM. */
async function serving(dir: string, body: (uri: string) => void): Promise<void> {
  const socket = path.join(dir, 'nbd.sock');
  process.stdout.write(`$ img serve -r -t -k nbd.sock disk.qcow2 &\n`);
  const server = spawn(process.execPath, [IMG, 'serve', '-r', '-t', '-k', socket, 'disk.qcow2'], { cwd: dir, stdio: 'inherit' });
  const exited = new Promise<number | null>((resolve) => server.on('exit', (code) => resolve(code)));
  try {
    for (let i = 0; i < 200 && !fs.existsSync(socket); i++) await new Promise((r) => setTimeout(r, 25));
    if (!fs.existsSync(socket)) throw new ImageError('IO', 'demo: img serve did not start');
    body(`nbd+unix:///?socket=${socket}`);
  } finally {
    server.kill('SIGTERM');
    const code = await exited;
    process.stdout.write(`    -> img serve drained and exited (${code})\n`);
  }
}

/**
 * The last step: an ext4 filesystem holding a file (mke2fs -d), converted to qcow2 by img, booted
 * by img, the file read inside the guest.
 */
function bootStep(dir: string): void {
  const tree = path.join(dir, 'guest-files');
  fs.mkdirSync(tree);
  fs.writeFileSync(path.join(tree, 'hello.txt'), 'Hello from inside the guest: this file was read by a VM booted from guest.qcow2.\n');
  const raw = path.join(dir, 'guest.raw');
  fs.writeFileSync(raw, '');
  fs.truncateSync(raw, 64 * MiB);
  if (spawnSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, raw]).status !== 0) {
    process.stdout.write('\n(mke2fs is not installed: skipping the boot)\n');
    return;
  }
  process.stdout.write('\nBoot it: an ext4 filesystem made with mke2fs -d, as qcow2, booted to read a file inside it:\n');
  step(dir, 'img', ['convert', '-O', 'qcow2', 'guest.raw', 'guest.qcow2']);
  step(dir, 'img', ['boot', 'guest.qcow2', '--', 'cat', 'hello.txt']);
}

const onDisk = (dir: string, name: string): string => sizeToStr(fs.statSync(path.join(dir, name)).blocks * 512);

export function register(program: Command): void {
  program
    .command('demo')
    .description('show the main job on a sample disk, in a temporary directory')
    .option('--keep', 'keep the temporary directory')
    .action(
      action(1, async ({ opts }) => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img-demo-'));
        try {
          process.stdout.write(`img demo, in ${dir}\n\n`);
          const fileBytes = await makeDisk(path.join(dir, 'disk.raw'));
          process.stdout.write(
            `Made disk.raw: ${sizeToStr(DISK_SIZE)} virtual; ${sizeToStr(fileBytes)} of files from /usr/lib, ` +
              `${sizeToStr(RANDOM_BYTES)} of random bytes, ${sizeToStr(ZEROES_BYTES)} of written zeroes, holes elsewhere ` +
              `(${onDisk(dir, 'disk.raw')} on disk).\n\n`,
          );
          step(dir, 'img', ['convert', '-O', 'qcow2', 'disk.raw', 'disk.qcow2']);
          process.stdout.write(`    -> disk.qcow2 takes ${onDisk(dir, 'disk.qcow2')}: holes and zeroes were skipped\n`);
          step(dir, 'img', ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', 'disk.qcow2', 'disk-zstd.qcow2']);
          process.stdout.write(`    -> disk-zstd.qcow2 takes ${onDisk(dir, 'disk-zstd.qcow2')}\n`);
          step(dir, 'img', ['info', 'disk-zstd.qcow2']);
          step(dir, 'img', ['check', 'disk-zstd.qcow2']);
          step(dir, 'img', ['map', 'disk.qcow2']);
          step(dir, 'img', ['compare', 'disk.raw', 'disk-zstd.qcow2']);

          process.stdout.write('\nSnapshots and backing chains:\n');
          step(dir, 'img', ['snapshot', '-c', 'fresh', 'disk.qcow2']);
          step(dir, 'img', ['snapshot', '-l', 'disk.qcow2']);
          step(dir, 'img', ['create', '-f', 'qcow2', '-b', 'disk.qcow2', '-F', 'qcow2', 'work.qcow2']);
          step(dir, 'img', ['info', '--backing-chain', 'work.qcow2']);

          process.stdout.write('\nServing over NBD (any NBD client can read or write it):\n');
          await serving(dir, (uri) => {
            step(dir, 'img', ['info', uri]);
            step(dir, 'img', ['compare', 'disk.raw', uri]);
            if (spawnSync('nbdinfo', ['--version']).status === 0) step(dir, 'nbdinfo', ['--map', uri]);
          });
          if (hasQemuImg()) {
            process.stdout.write('\nThe reference agrees:\n');
            step(dir, 'qemu-img', ['check', 'disk-zstd.qcow2']);
            step(dir, 'qemu-img', ['compare', 'disk.raw', 'disk.qcow2']);
            step(dir, 'qemu-img', ['compare', 'disk.raw', 'disk-zstd.qcow2']);
          } else process.stdout.write('\n(qemu-img is not installed: skipping the cross-check with it)\n');
          bootStep(dir);
          process.stdout.write('\nDone.\n');
        } finally {
          if (opts.keep) process.stdout.write(`Kept ${dir}\n`);
          else fs.rmSync(dir, { recursive: true, force: true });
        }
      }),
    );
}
