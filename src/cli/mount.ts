/**
 * img mount [--read-only] [-f fmt] [--fs [-P N]] [--daemon] image DIR
 * Exports the image through FUSE at DIR: DIR/disk (the virtual disk as a raw file) and DIR/p1,
 * DIR/p2, … (its partitions); with --fs (root), the guest filesystem itself at DIR. Prints the
 * paths once the mount is ready, then serves in the foreground until `img unmount DIR`, an
 * unmount of DIR, SIGINT or SIGTERM; --daemon returns once the mount is ready instead.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { Command } from 'commander';
import { ImageError } from '../block/errors';
import { mountImage } from '../fuse/mount';
import { action, reportError } from './command';
import { formatArg, tuneForServing } from './common';

/** The daemon child's channel to its parent: what to print once ready, then closed. */
const READY_FD = 3;
const DAEMON_ENV = 'IMG_MOUNT_DAEMON';

function partitionArg(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 256) throw new ImageError('INVALID_ARGUMENT', `invalid partition number '${value}'`);
  return n;
}

/** Runs this same command in the background; resolves with its status once it is ready or has failed. */
function daemonize(): Promise<number> {
  const argv = process.argv.slice(1).filter((a) => a !== '--daemon');
  const child = spawn(process.execPath, argv, {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    env: { ...process.env, [DAEMON_ENV]: '1' },
  });
  let errors = '';
  let ready = '';
  child.stderr!.on('data', (d: Buffer) => (errors += d.toString()));
  const readyPipe = child.stdio[READY_FD] as NodeJS.ReadableStream;
  readyPipe.on('data', (d: Buffer) => (ready += d.toString()));
  return new Promise((resolve) => {
    const onExit = (code: number | null) => {
      process.stderr.write(errors || `img: mount failed (status ${code})\n`);
      resolve(code || 1);
    };
    child.once('exit', onExit);
    readyPipe.once('end', () => {
      if (!ready) return; // failed: the exit handler reports
      child.removeListener('exit', onExit);
      process.stderr.write(errors); // warnings
      process.stdout.write(ready);
      child.stderr!.destroy();
      child.unref();
      resolve(0);
    });
  });
}

export function register(program: Command): void {
  program
    .command('mount')
    .description('export an image, its partitions or its filesystem through FUSE at DIR')
    .option('-f <fmt>', 'image format (probed when absent)')
    .option('-r, --read-only', 'export read-only')
    .option('--fs', 'mount the guest filesystem at DIR (root; loop device)')
    .option('-P, --partition <n>', 'with --fs: the partition holding the filesystem')
    .option('--daemon', 'return once the mount is ready, serving in the background')
    .argument('<image>')
    .argument('<dir>')
    .action(
      action(1, async ({ opts, args }) => {
        const partition = partitionArg(opts.partition);
        if (opts.daemon && !process.env[DAEMON_ENV]) return daemonize();
        tuneForServing();
        const daemon = !!process.env[DAEMON_ENV];
        const mounted = await mountImage({ image: args[0], dir: args[1], format: formatArg(opts.f), readOnly: !!opts.readOnly, fs: !!opts.fs, partition });
        // main.ts exits at once on these signals; a mount is undone and the image flushed first.
        for (const signal of ['SIGINT', 'SIGTERM'] as const) {
          process.removeAllListeners(signal);
          process.on(signal, () => mounted.unmount().catch((err) => reportError(err, !!opts.debug)));
        }
        for (const w of mounted.warnings) process.stderr.write(`img: warning: ${w}\n`);
        const text = mounted.paths.join('\n') + '\n';
        if (daemon) {
          // Nobody reads our output after this: errors go nowhere rather than killing the server.
          for (const s of [process.stdout, process.stderr]) s.on('error', () => undefined);
          fs.writeSync(READY_FD, text);
          fs.closeSync(READY_FD);
        } else {
          process.stdout.write(text);
        }
        await mounted.finished;
      }),
    );
}
