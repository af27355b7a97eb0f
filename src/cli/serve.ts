/**
 * img serve [--socket PATH | --port N [--bind ADDR]] [--read-only] [--export-name NAME]
 *           [--description TEXT] [-l SNAPSHOT] [--tls-creds DIR | --tls-psk FILE]
 *           [--tls=require|allow] [--shared N] [--persistent] [-f fmt] image…
 * Serves each image (with its backing chain) as an NBD export, as qemu-nbd does. Prints one
 * URI per export once listening. SIGINT/SIGTERM: stop accepting, finish what is in flight,
 * flush, close the images, exit 0. Without --persistent it exits after the last client.
 */
import * as path from 'node:path';
import { Command } from 'commander';
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { Image } from '../block/image';
import { openSnapshotOf } from '../convert/convert';
import { openImage } from '../formats/index';
import { NbdExport } from '../nbd/export';
import { DEFAULT_PORT } from '../nbd/protocol';
import { ListenAddress, NbdServer } from '../nbd/server';
import { pskCredentials, TlsConfig, x509Credentials } from '../nbd/tls';
import { action } from './command';
import { collect, formatArg, tuneForServing } from './common';

const DEFAULT_BIND = '127.0.0.1';

function intArg(value: unknown, what: string, max: number): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > max) throw new ImageError('INVALID_ARGUMENT', `invalid ${what} '${value}': expected 0 to ${max}`);
  return n;
}

function listenArg(opts: Record<string, unknown>): ListenAddress {
  if (opts.socket !== undefined) {
    if (opts.port !== undefined || opts.bind !== undefined) throw new ImageError('INVALID_ARGUMENT', '--socket excludes --port and --bind');
    return { socket: opts.socket as string };
  }
  return { port: intArg(opts.port, 'port', 65535) ?? DEFAULT_PORT, host: (opts.bind as string | undefined) ?? DEFAULT_BIND };
}

async function tlsArg(opts: Record<string, unknown>): Promise<TlsConfig | undefined> {
  const mode = opts.tls as string | undefined;
  if (mode !== undefined && mode !== 'require' && mode !== 'allow') throw new ImageError('INVALID_ARGUMENT', `--tls must be require or allow, not '${mode}'`);
  if (opts.tlsCreds !== undefined && opts.tlsPsk !== undefined) throw new ImageError('INVALID_ARGUMENT', '--tls-creds and --tls-psk exclude each other');
  if (opts.tlsVerifyPeer && opts.tlsCreds === undefined) throw new ImageError('INVALID_ARGUMENT', '--tls-verify-peer needs --tls-creds (X.509)');
  if (opts.tlsCreds === undefined && opts.tlsPsk === undefined) {
    if (mode) throw new ImageError('INVALID_ARGUMENT', '--tls needs --tls-creds or --tls-psk');
    return undefined;
  }
  const options =
    opts.tlsCreds !== undefined ? await x509Credentials(opts.tlsCreds as string, !!opts.tlsVerifyPeer) : await pskCredentials(opts.tlsPsk as string);
  return { required: mode !== 'allow', options };
}

/** Export names: as given (by position), else '' for a single image and the file names for several. */
function exportName(files: string[], names: string[], i: number): string {
  if (names[i] !== undefined) return names[i];
  return files.length === 1 ? '' : path.basename(files[i]);
}

function uriOf(addr: ListenAddress, name: string): string {
  const n = encodeURIComponent(name);
  if ('socket' in addr) return `nbd+unix:///${n}?socket=${addr.socket}`;
  const host = addr.host.includes(':') ? `[${addr.host}]` : addr.host;
  return `nbd://${host}:${addr.port}/${n}`;
}

export function register(program: Command): void {
  program
    .command('serve')
    .description('serve images over NBD (qemu-nbd compatible)')
    .option('-f <fmt>', 'image format (probed when absent)')
    .option('-k, --socket <path>', 'listen on this unix socket')
    .option('-p, --port <port>', `listen on this TCP port (default ${DEFAULT_PORT}; 0 picks one)`)
    .option('-b, --bind <addr>', `address to listen on (default ${DEFAULT_BIND})`)
    .option('-r, --read-only', 'export read-only')
    .option('-x, --export-name <name>', 'export name (repeat for several images)', collect)
    .option('-D, --description <text>', 'export description (repeat for several images)', collect)
    .option('-l <snapshot>', 'serve this internal snapshot (read-only)')
    .option('--tls-creds <dir>', 'X.509 credentials: server-cert.pem, server-key.pem [, ca-cert.pem]')
    .option('--tls-verify-peer', 'X.509: clients must present a certificate signed by ca-cert.pem')
    .option('--tls-psk <file>', 'pre-shared keys, "identity:hexkey" per line')
    .option('--tls <mode>', 'require (default with credentials) or allow')
    .option('-e, --shared <n>', 'most clients at once (0: no limit)', '1')
    .option('-t, --persistent', 'keep serving after the last client disconnects')
    .argument('<image...>')
    .action(
      action(1, async ({ opts, args }) => {
        tuneForServing();
        const addr = listenArg(opts);
        const shared = intArg(opts.shared, 'number of shared connections', 1 << 16)!;
        const tls = await tlsArg(opts);
        const names = (opts.exportName as string[] | undefined) ?? [];
        const descriptions = (opts.description as string[] | undefined) ?? [];
        const snapshot = opts.l as string | undefined;
        const readOnly = !!opts.readOnly || snapshot !== undefined;
        const images: Image[] = [];
        const views: BlockDevice[] = [];
        const closeAll = async () => {
          for (const v of views) await v.close();
          for (const i of images) await i.close();
        };
        try {
          const exports: NbdExport[] = [];
          for (const [i, file] of args.entries()) {
            const image = await openImage(file, { format: formatArg(opts.f), readOnly });
            images.push(image);
            const device = snapshot === undefined ? image : await openSnapshotOf(image, snapshot);
            if (device !== image) views.push(device);
            const name = exportName(args, names, i);
            if (exports.some((e) => e.name === name)) throw new ImageError('INVALID_ARGUMENT', `two exports are named '${name}': give --export-name for each image`);
            // One device object serves every connection, so flushes are shared: multi-conn is safe.
            exports.push({ name, description: descriptions[i], device, readOnly, multiConn: shared !== 1, granularity: image.clusterSize });
          }
          const server = new NbdServer({ exports, tls, maxConnections: shared, persistent: !!opts.persistent });
          const bound = await server.listen(addr);
          // main.ts exits at once on these signals; a server drains and flushes first instead.
          for (const signal of ['SIGINT', 'SIGTERM'] as const) {
            process.removeAllListeners(signal);
            process.once(signal, () => void server.shutdown());
          }
          process.stdout.write(exports.map((e) => uriOf(bound, e.name)).join('\n') + '\n');
          await server.finished;
          await server.shutdown();
        } finally {
          await closeAll();
        }
      }),
    );
}
