/**
 * The client side of NBD_OPT_STARTTLS for nbds:// URIs, with libnbd's credentials: a
 * tls-certificates directory (ca-cert.pem, optional client-cert.pem + client-key.pem) or a
 * tls-psk-file of "identity:hexkey" lines, from which the tls-username's key is taken.
 *
 * The server's certificate always has to chain to ca-cert.pem (the system's CAs without one).
 * Its name is checked against tls-hostname, else the URI's host (an IP address against the
 * certificate's IP entries). A unix socket has no host name, so there only the chain is checked
 * unless tls-hostname names one: the socket's file permissions already pick the peer. (libnbd
 * does not verify the peer at all on unix sockets by default; img is stricter.)
 */
import * as fs from 'node:fs/promises';
import { isIP, Socket } from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { ImageError, fromSystemError } from '../block/errors';
import { PSK_CIPHERS, parsePskFile, readCred, tlsHandshake, tlsReason } from './tls';
import { NbdTls } from './uri';

async function pskOptions(t: NbdTls, file: string): Promise<tls.ConnectionOptions> {
  const keys = parsePskFile((await readCred(file))!.toString('utf8'), file);
  const psk = keys.get(t.username);
  if (!psk) throw new ImageError('INVALID_ARGUMENT', `no key for the TLS username '${t.username}' (set tls-username=NAME)`, { file });
  return {
    ciphers: PSK_CIPHERS,
    minVersion: 'TLSv1.2',
    maxVersion: 'TLSv1.2',
    pskCallback: () => ({ psk, identity: t.username }),
    checkServerIdentity: () => undefined, // the key authenticates the server: it has no certificate
  };
}

async function x509Options(t: NbdTls): Promise<tls.ConnectionOptions> {
  const dir = t.certificates;
  if (dir) await fs.stat(dir).catch((err) => Promise.reject(fromSystemError(err, dir))); // a typo must not mean "the system's CAs"
  const ca = dir ? await readCred(path.join(dir, 'ca-cert.pem'), true) : undefined;
  const cert = dir ? await readCred(path.join(dir, 'client-cert.pem'), true) : undefined;
  const key = cert ? await readCred(path.join(dir!, 'client-key.pem')) : undefined;
  const host = t.hostname;
  return {
    ca,
    cert,
    key,
    minVersion: 'TLSv1.2',
    rejectUnauthorized: true,
    servername: host && !isIP(host) ? host : undefined,
    checkServerIdentity: (_name, peer) => (host ? tls.checkServerIdentity(host, peer) : undefined),
  };
}

/** The TLS options for an nbds URI, its credential files read before connecting (a bad file fails early). */
export function clientTlsOptions(t: NbdTls): Promise<tls.ConnectionOptions> {
  return t.pskFile ? pskOptions(t, t.pskFile) : x509Options(t);
}

/** Wraps `socket` (just past the server's STARTTLS ACK) in TLS; rejects unless the server proved who it is. */
export async function startTls(socket: Socket, options: tls.ConnectionOptions): Promise<tls.TLSSocket> {
  try {
    return await tlsHandshake(tls.connect({ ...options, socket }), 'secureConnect');
  } catch (err) {
    const cause = (err as ImageError).cause as NodeJS.ErrnoException | undefined;
    // Node's verification codes (SELF_SIGNED_CERT_IN_CHAIN, ERR_TLS_CERT_ALTNAME_INVALID, …), not
    // OpenSSL alerts from the server (ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE: it refused ours).
    if (cause?.code && !cause.code.startsWith('ERR_SSL_') && /CERT|VERIFY|SELF_SIGNED|ISSUER/.test(cause.code)) {
      throw new ImageError('IO', `the server's TLS certificate does not verify: ${cause.message}`, { cause: err });
    }
    if (options.pskCallback) throw new ImageError('IO', `TLS handshake with the pre-shared key failed (wrong key or username?): ${tlsReason(cause ?? (err as Error))}`, { cause: err });
    throw err;
  }
}
