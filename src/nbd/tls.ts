/**
 * TLS for NBD_OPT_STARTTLS (proto.md "TLS support"): X.509 credentials from a directory laid
 * out as qemu's tls-creds-x509 (server-cert.pem, server-key.pem, optional ca-cert.pem), or
 * pre-shared keys from a file of "identity:hexkey" lines as psktool writes and qemu's
 * tls-creds-psk reads. The upgrade wraps the plain socket in a node:tls server socket.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { Socket } from 'node:net';
import * as tls from 'node:tls';
import { ImageError, fromSystemError } from '../block/errors';

export interface TlsConfig {
  /** FORCEDTLS when true (every option but STARTTLS and ABORT refused in plaintext), else SELECTIVETLS. */
  required: boolean;
  options: tls.TLSSocketOptions;
}

/** PSK needs TLS 1.2 cipher suites in node:tls; these are the ones GnuTLS clients offer. */
export const PSK_CIPHERS = 'ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256';

/** Reads one credential file; an optional one that is missing gives undefined. */
export async function readCred(file: string, optional = false): Promise<Buffer | undefined> {
  try {
    return await fs.readFile(file);
  } catch (err) {
    if (optional && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw fromSystemError(err, file);
  }
}

/**
 * X.509 server credentials from `dir` (qemu's file names). With `verifyPeer` (qemu's
 * verify-peer=on) a client must present a certificate that ca-cert.pem signed.
 */
export async function x509Credentials(dir: string, verifyPeer = false): Promise<tls.TLSSocketOptions> {
  const cert = await readCred(path.join(dir, 'server-cert.pem'));
  const key = await readCred(path.join(dir, 'server-key.pem'));
  const ca = await readCred(path.join(dir, 'ca-cert.pem'), !verifyPeer);
  try {
    const secureContext = tls.createSecureContext({ cert, key, ca, minVersion: 'TLSv1.2' });
    return verifyPeer ? { secureContext, requestCert: true, rejectUnauthorized: true } : { secureContext };
  } catch (err) {
    throw new ImageError('INVALID_ARGUMENT', `unusable TLS credentials: ${(err as Error).message}`, { file: dir, cause: err });
  }
}

/** Parses a PSK file: one "identity:hexkey" per line. */
export function parsePskFile(text: string, file: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line) return;
    const colon = line.lastIndexOf(':');
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (colon <= 0 || !/^([0-9a-fA-F]{2})+$/.test(hex)) {
      throw new ImageError('INVALID_ARGUMENT', `line ${i + 1} is not "identity:hexkey"`, { file, field: 'psk', value: line });
    }
    keys.set(identity, Buffer.from(hex, 'hex'));
  });
  if (keys.size === 0) throw new ImageError('INVALID_ARGUMENT', 'no keys in the PSK file', { file });
  return keys;
}

export async function pskCredentials(file: string): Promise<tls.TLSSocketOptions> {
  const text = (await readCred(file))!.toString('utf8');
  const keys = parsePskFile(text, file);
  return {
    secureContext: tls.createSecureContext({ ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' }),
    pskCallback: (_socket: tls.TLSSocket, identity: string) => keys.get(identity) ?? null,
  } as tls.TLSSocketOptions;
}

/** The reason in OpenSSL's "…:error:0A0003FC:SSL routines:func:reason:file:line:…" messages. */
export function tlsReason(err: Error): string {
  return /:SSL routines:[^:]*:([^:]+):/.exec(err.message)?.[1] ?? err.message;
}

/** Resolves with `secure` once its handshake (`event`: 'secure' on a server, 'secureConnect' on a client) is done. */
export function tlsHandshake(secure: tls.TLSSocket, event: 'secure' | 'secureConnect'): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const fail = (err: Error) => {
      secure.destroy();
      reject(new ImageError('IO', `TLS handshake failed: ${tlsReason(err)}`, { cause: err }));
    };
    const closed = () => fail(new Error('connection closed'));
    secure.once('error', fail);
    // A half-open socket (the server's) gives 'end' alone when the peer leaves mid-handshake.
    secure.once('end', closed);
    secure.once('close', closed);
    secure.once(event, () => {
      secure.off('error', fail);
      secure.off('end', closed);
      secure.off('close', closed);
      resolve(secure);
    });
  });
}

/** Runs the server side of the TLS handshake on `socket`; resolves once it is secure. */
export function upgradeToTls(socket: Socket, options: tls.TLSSocketOptions): Promise<tls.TLSSocket> {
  return tlsHandshake(new tls.TLSSocket(socket, { ...options, isServer: true }), 'secure');
}
