/**
 * img boot: boots an image in a VM to test it.
 *
 * - Appliance mode (a command given): img builds an initramfs (appliance.ts) that mounts the
 *   image's filesystem, runs the command there, and reports its exit status on the console.
 * - Root mode: the image's own root filesystem boots with the distribution's initramfs; the
 *   console is the output, the run ends at shutdown or timeout.
 *
 * The disk: a raw file goes to the engine as is; any other image, a chain, or a --snapshot
 * overlay is served by img's NBD server on a private unix socket in this process. Everything
 * temporary (socket, appliance, overlay) lives in one directory removed at the end, whatever
 * happened.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ImageError } from '../block/errors';
import { Image } from '../block/image';
import { openImage } from '../formats/index';
import { NbdServer } from '../nbd/server';
import { isNbdUri } from '../nbd/uri';
import { createOverlay } from '../snapshot/chain';
import { buildAppliance } from './appliance';
import { ConsoleResult } from './console-result';
import { chooseEngine, EngineName, Machine, MachineDisk, MachineExit, MachineSpec } from './engine';
import { startNative } from './engine-native';
import { startQemu } from './engine-qemu';
import { findFilesystem } from '../guestfs/find-fs';
import { findKernel } from './kernel';

/** Exit statuses of a boot besides the command's own. */
export const EXIT_TIMEOUT = 124; // as timeout(1)
export const EXIT_NO_RESULT = 125; // the guest ended without reporting the command's status
export const EXIT_INTERRUPTED = 130;

const DEFAULT_TIMEOUT_S = 300;
const DEFAULT_MEMORY_MIB = 512;
/** What both engines' device models need: one CPU without ACPI, a triple fault ending the run. */
const BASE_CMDLINE = 'console=ttyS0 acpi=off reboot=t panic=-1';

export interface BootOptions {
  /** Appliance mode: the command and its arguments, run in the image's filesystem. */
  command?: string[];
  /** Root mode: boot the image's own root filesystem (true: the one img finds, or a root= value). */
  root?: boolean | string;
  /** Partition holding the filesystem (appliance mode; root mode's default root). */
  partition?: number;
  /** Run the command chrooted into the filesystem. */
  chroot?: boolean;
  kernel?: string;
  /** Root mode's initramfs (default: the host's for the kernel's release). */
  initrd?: string;
  /** Added to the kernel command line. */
  append?: string;
  memoryMiB?: number;
  /** The image's format (probed when absent). */
  format?: string;
  readOnly?: boolean;
  /** Guest writes go to a temporary overlay, discarded at the end. */
  snapshot?: boolean;
  timeoutSec?: number;
  engine?: EngineName;
  /** Output as it arrives (the command's in appliance mode, the console in root mode); `output` is then left empty. */
  onOutput?: (chunk: Buffer) => void;
  /** Console lines that are not output (kernel and init messages in appliance mode). */
  onConsole?: (chunk: Buffer) => void;
  /** One-line notices (which engine and why). */
  onNotice?: (line: string) => void;
  /** Aborting stops the guest; the boot then ends with EXIT_INTERRUPTED. */
  signal?: AbortSignal;
}

export interface BootResult {
  /** The command's exit status; EXIT_TIMEOUT, EXIT_NO_RESULT or EXIT_INTERRUPTED otherwise. */
  exitCode: number;
  /** The command's output (root mode: the console), unless it was streamed to `onOutput`. */
  output: string;
  /** Why the exit status is not the command's (or root mode's shutdown), in one line. */
  message?: string;
}

/** What the boot attaches: the machine's disk, plus what to release when it is over. */
interface AttachedDisk {
  disk: MachineDisk;
  server?: NbdServer;
  image?: Image;
}

async function attachDisk(file: string, opts: BootOptions, dir: string, findFs: (image: Image) => Promise<void>): Promise<AttachedDisk> {
  const readOnly = !!opts.readOnly;
  let image = await openImage(file, { format: opts.format, readOnly: readOnly || !!opts.snapshot });
  try {
    await findFs(image);
    const remote = isNbdUri(file); // an NBD export: img's server relays it (the engines take local disks only)
    if (image.format === 'raw' && !opts.snapshot && !remote) {
      await image.close();
      return { disk: { kind: 'file', path: path.resolve(file), readOnly } };
    }
    if (opts.snapshot) {
      const overlay = path.join(dir, 'overlay.qcow2');
      const format = image.format;
      await image.close();
      await createOverlay(overlay, { backingFile: path.resolve(file), backingFormat: format });
      image = await openImage(overlay, { format: 'qcow2' });
    }
    const socket = path.join(dir, 'nbd.sock');
    const server = new NbdServer({
      exports: [{ name: '', device: image, readOnly, multiConn: false, granularity: image.clusterSize }],
      maxConnections: 0,
      persistent: true,
    });
    await server.listen({ socket });
    return { disk: { kind: 'nbd', socket, readOnly }, server, image };
  } catch (err) {
    await image.close().catch(() => {});
    throw err;
  }
}

async function detachDisk(a: AttachedDisk): Promise<void> {
  try {
    if (a.server) await a.server.shutdown(); // flushes the export
  } finally {
    if (a.image) await a.image.close();
  }
}

function startMachine(spec: MachineSpec, engine: EngineName, accel: 'kvm' | 'tcg'): Machine {
  return engine === 'native' ? startNative(spec) : startQemu(spec, accel);
}

function checkOptions(opts: BootOptions): void {
  if (opts.readOnly && opts.snapshot) throw new ImageError('INVALID_ARGUMENT', '--read-only and --snapshot exclude each other');
  if (!opts.command?.length && !opts.root) throw new ImageError('INVALID_ARGUMENT', 'nothing to do: give a command (-- command …) or --root');
  if (opts.command?.length && opts.root) throw new ImageError('INVALID_ARGUMENT', '--root boots the image itself: it takes no command');
  for (const [name, v, max] of [
    ['--timeout', opts.timeoutSec, 7 * 24 * 3600],
    ['--memory', opts.memoryMiB, 1 << 20],
    ['-P', opts.partition, 1 << 16],
  ] as const) {
    if (v !== undefined && (!Number.isFinite(v) || v <= 0 || v > max)) throw new ImageError('INVALID_ARGUMENT', `invalid ${name} value '${v}'`);
  }
}

/** Boots `image` and runs `opts.command` in it (or boots its root filesystem with `opts.root`). */
export async function boot(image: string, opts: BootOptions): Promise<BootResult> {
  checkOptions(opts);
  if (opts.snapshot && isNbdUri(image)) throw new ImageError('UNSUPPORTED', '--snapshot needs an image file: an NBD export cannot back an overlay');
  const choice = chooseEngine(opts.engine);
  if (choice.note) opts.onNotice?.(choice.note);
  const kernel = findKernel(opts.kernel);
  const appliance = !!opts.command?.length;
  const distroInitrd = `/boot/initrd.img-${kernel.release}`;
  if (!appliance && opts.initrd === undefined && !fs.existsSync(distroInitrd)) {
    throw new ImageError('NOT_FOUND', `root mode needs the distribution's initramfs: ${distroInitrd} is missing, give --initrd`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'img-boot-'));
  try {
    const nonce = randomBytes(8).toString('hex');
    let initrd = opts.initrd ?? distroInitrd;
    let cmdline = `${BASE_CMDLINE} `;
    const attached = await attachDisk(image, opts, dir, async (img) => {
      const root = typeof opts.root === 'string' ? undefined : await findFilesystem(img, opts.partition);
      if (appliance) {
        initrd = path.join(dir, 'appliance.cpio.gz');
        fs.writeFileSync(
          initrd,
          buildAppliance({
            nonce,
            release: kernel.release,
            modulesRoot: path.dirname(kernel.modulesDir),
            fs: root!.type,
            device: root!.device,
            readOnly: !!opts.readOnly,
            chroot: !!opts.chroot,
            argv: opts.command!,
          }),
        );
        cmdline += 'quiet loglevel=0';
      } else cmdline += `root=${typeof opts.root === 'string' ? opts.root : `/dev/${root!.device}`} ${opts.readOnly ? 'ro' : 'rw'}`;
    });
    try {
      if (opts.append) cmdline += ` ${opts.append}`;
      const spec: MachineSpec = {
        kernel: kernel.kernel,
        initrd,
        cmdline,
        memoryMiB: opts.memoryMiB ?? DEFAULT_MEMORY_MIB,
        disk: attached.disk,
        timeoutMs: (opts.timeoutSec ?? DEFAULT_TIMEOUT_S) * 1000,
      };
      return await run(spec, choice.engine, choice.accel, appliance ? nonce : undefined, opts);
    } finally {
      await detachDisk(attached);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs the machine to its end and turns what happened into a BootResult. */
async function run(spec: MachineSpec, engine: EngineName, accel: 'kvm' | 'tcg', nonce: string | undefined, opts: BootOptions): Promise<BootResult> {
  const output: Buffer[] = [];
  // Streamed output is not kept as well: memory stays bounded however much the guest prints.
  const onOutput = opts.onOutput ?? ((chunk: Buffer) => output.push(Buffer.from(chunk)));
  const reader = nonce ? new ConsoleResult(nonce, onOutput, (c) => opts.onConsole?.(c)) : undefined;
  const tail: Buffer[] = []; // the last console bytes, for a guest that dies without a result
  const machine = startMachine(spec, engine, accel);
  const abort = () => void machine.stop();
  opts.signal?.addEventListener('abort', abort);
  if (opts.signal?.aborted) abort();
  machine.console.on('data', (chunk: Buffer) => {
    if (reader) {
      reader.feed(chunk);
      tail.push(chunk);
      while (tail.length > 16) tail.shift();
    } else onOutput(chunk);
  });
  let exit: MachineExit;
  try {
    exit = await machine.exited;
  } finally {
    opts.signal?.removeEventListener('abort', abort);
  }
  // The console stream may still hold the last bytes the guest wrote.
  if (!machine.console.readableEnded) await new Promise((r) => { machine.console.once('end', r); machine.console.once('close', r); setTimeout(r, 1000).unref(); });
  reader?.finish();
  const text = Buffer.concat(output).toString('utf8');
  const outcome = reader?.outcome;
  if (outcome?.kind === 'status') return { exitCode: outcome.status, output: text };
  const secs = spec.timeoutMs / 1000;
  if (exit.reason === 'timeout') return { exitCode: EXIT_TIMEOUT, output: text, message: `the guest did not finish within ${secs} s (--timeout): stopped it` };
  if (exit.reason === 'stopped') return { exitCode: EXIT_INTERRUPTED, output: text, message: 'interrupted: stopped the guest' };
  if (exit.reason === 'error') throw new ImageError('IO', exit.message ?? `the ${engine} engine failed`);
  if (outcome?.kind === 'fail') return { exitCode: EXIT_NO_RESULT, output: text, message: `the appliance failed: ${outcome.message}` };
  if (reader) {
    const last = Buffer.concat(tail).toString('utf8').replace(/\r/g, '').trim().split('\n').pop() ?? '';
    return { exitCode: EXIT_NO_RESULT, output: text, message: `the guest stopped without reporting the command's exit status${last ? ` (console: ${last})` : ''}` };
  }
  return { exitCode: 0, output: text };
}
