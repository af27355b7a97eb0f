/**
 * img boot [--kernel K] [--initrd I] [--append ARGS] [--memory M] [--read-only | --snapshot]
 *          [--timeout S] [--engine native|qemu] [-P N] [--chroot] [--root [DEV]] [-f fmt]
 *          [--verbose] image [-- command …]
 * Boots an image to test it. With a command: runs it in the image's filesystem, streams its
 * output to stdout and exits with its status (124 when --timeout fires, 125 when the guest ends
 * without reporting one). With --root: boots the image's own root filesystem and shows the
 * console until the guest shuts down.
 */
import { Command } from 'commander';
import { ImageError } from '../block/errors';
import { parseSize } from '../formats/options';
import { boot } from '../runner/boot';
import { EngineName } from '../runner/engine';
import { action } from './command';
import { formatArg } from './common';

const MiB = 1 << 20;

function numberArg(value: unknown, what: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new ImageError('INVALID_ARGUMENT', `invalid ${what} '${value}': expected a positive number`);
  return n;
}

/** Memory as qemu's -m takes it: a plain number is MiB, or a size with a suffix. */
function memoryArg(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  const text = String(value);
  return /^\d+$/.test(text) ? Number(text) : Math.floor(parseSize(text, 'memory size') / MiB);
}

function engineArg(value: unknown): EngineName | undefined {
  if (value === undefined || value === 'native' || value === 'qemu') return value;
  throw new ImageError('INVALID_ARGUMENT', `--engine must be native or qemu, not '${value}'`);
}

export function register(program: Command): void {
  program
    .command('boot')
    .description('boot an image in a VM: run a command in its filesystem, or boot its root filesystem')
    .option('-f <fmt>', 'image format (probed when absent)')
    .option('--kernel <file>', 'kernel (bzImage; default: the newest /boot/vmlinuz-*)')
    .option('--initrd <file>', "root mode's initramfs (default: the host's for the kernel)")
    .option('--append <args>', 'more kernel command line arguments')
    .option('-m, --memory <size>', 'guest memory (MiB, or with a suffix: 1G)', '512')
    .option('-r, --read-only', 'refuse guest writes (the filesystem is mounted read-only)')
    .option('-s, --snapshot', 'discard guest writes (they go to a temporary overlay)')
    .option('-t, --timeout <seconds>', 'stop the guest after this long (exit status 124)', '300')
    .option('--engine <engine>', 'native (bundled KVM runner) or qemu; chosen from /dev/kvm when absent')
    .option('-P, --partition <n>', 'the partition holding the filesystem (default: the first with one)')
    .option('--chroot', 'run the command chrooted into the filesystem rather than in it')
    .option('--root [device]', "boot the image's own root filesystem (root=DEVICE; default: the one found)")
    .option('-v, --verbose', 'show the whole console on stderr')
    .argument('<image>')
    .argument('[command...]', 'the command to run in the image (after --)')
    .addHelpText(
      'after',
      "\nExit status: the command's; 124 when --timeout fires, 125 when the guest ends without reporting a status,\n" +
        '130 when interrupted, 1 for errors before the boot. --root: 0 when the guest shuts down.',
    )
    .action(
      action(1, async ({ opts, args }) => {
        const [image, ...command] = args;
        const controller = new AbortController();
        // main.ts exits at once on these signals; a boot stops its guest and cleans up first.
        for (const signal of ['SIGINT', 'SIGTERM'] as const) {
          process.removeAllListeners(signal);
          process.once(signal, () => controller.abort());
        }
        const verbose = !!opts.verbose;
        const result = await boot(image, {
          command,
          root: opts.root as boolean | string | undefined,
          partition: numberArg(opts.partition, 'partition number'),
          chroot: !!opts.chroot,
          kernel: opts.kernel as string | undefined,
          initrd: opts.initrd as string | undefined,
          append: opts.append as string | undefined,
          memoryMiB: memoryArg(opts.memory),
          format: formatArg(opts.f),
          readOnly: !!opts.readOnly,
          snapshot: !!opts.snapshot,
          timeoutSec: numberArg(opts.timeout, 'timeout'),
          engine: engineArg(opts.engine),
          onOutput: (chunk) => process.stdout.write(chunk),
          onConsole: verbose ? (chunk) => process.stderr.write(chunk) : undefined,
          onNotice: (line) => process.stderr.write(`img: ${line}\n`),
          signal: controller.signal,
        });
        if (result.message) process.stderr.write(`img: ${result.message}\n`);
        return result.exitCode;
      }),
    );
}
