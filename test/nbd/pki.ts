/**
 * Credentials and an image for the TLS tests: a CA with a server certificate for localhost and
 * 127.0.0.1, in qemu's and libnbd's directory layouts (made with openssl).
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before } from 'node:test';
import { tempDir } from '../helpers';
import { imgServe, must, portOf, Served } from './servers';

/** A CA, and a server certificate for localhost signed by it, in qemu's directory layout. */
export function makePki(dir: string): { server: string; client: string } {
  const server = path.join(dir, 'server');
  const client = path.join(dir, 'client');
  fs.mkdirSync(server);
  fs.mkdirSync(client);
  const ca = path.join(dir, 'ca-cert.pem');
  const caKey = path.join(dir, 'ca-key.pem');
  must('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', caKey, '-out', ca, '-days', '2', '-subj', '/CN=img test CA');
  const csr = path.join(dir, 'server.csr');
  must('openssl', 'req', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(server, 'server-key.pem'), '-out', csr, '-subj', '/CN=localhost');
  const ext = path.join(dir, 'ext.cnf');
  fs.writeFileSync(ext, 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n');
  must('openssl', 'x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-out', path.join(server, 'server-cert.pem'), '-days', '2', '-extfile', ext);
  fs.copyFileSync(ca, path.join(server, 'ca-cert.pem'));
  fs.copyFileSync(ca, path.join(client, 'ca-cert.pem'));
  return { server, client };
}

/** A client certificate signed by the CA in `dir` (as makePki made it), in libnbd's and qemu's client layout. */
export function makeClientCert(dir: string, name: string, caDir = dir): string {
  const out = path.join(dir, name);
  fs.mkdirSync(out);
  const csr = path.join(dir, `${name}.csr`);
  must('openssl', 'req', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(out, 'client-key.pem'), '-out', csr, '-subj', `/CN=${name}`);
  const ext = path.join(dir, `${name}.cnf`);
  fs.writeFileSync(ext, 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n');
  const ca = path.join(caDir, 'ca-cert.pem');
  must('openssl', 'x509', '-req', '-in', csr, '-CA', ca, '-CAkey', path.join(caDir, 'ca-key.pem'), '-CAcreateserial', '-out', path.join(out, 'client-cert.pem'), '-days', '2', '-extfile', ext);
  fs.copyFileSync(path.join(dir, 'ca-cert.pem'), path.join(out, 'ca-cert.pem'));
  return out;
}

export function makeImage(dir: string): string {
  const file = path.join(dir, 'disk.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', file, '16M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 1M 3M', file);
  return file;
}

/** What servedWithTls gives a describe block once its before hook has run. */
export interface TlsFixture {
  dir: string;
  /** The X.509 directories (for 'x509'). */
  pki: { server: string; client: string };
  /** dir/psk/keys.psk with keys for alice and bob, where qemu's tls-creds-psk looks (for 'psk'). */
  keys: string;
  /** makeImage's qcow2 image, which the server serves. */
  file: string;
  server: Served;
  port: string;
}

/** In a describe: credentials, an image and `img serve --tls-creds|--tls-psk … ARGS image` on a loopback port, stopped after its tests. */
export function servedWithTls(prefix: string, creds: 'x509' | 'psk', args: string[] = []): TlsFixture {
  const t = { dir: tempDir(prefix) } as TlsFixture;
  before(async () => {
    t.file = makeImage(t.dir);
    if (creds === 'x509') {
      t.pki = makePki(t.dir);
      args = ['--tls-creds', t.pki.server, ...args];
    } else {
      fs.mkdirSync(path.join(t.dir, 'psk'));
      t.keys = path.join(t.dir, 'psk', 'keys.psk');
      fs.writeFileSync(t.keys, `alice:${randomBytes(32).toString('hex')}\nbob:${randomBytes(16).toString('hex')}\n`);
      args = ['--tls-psk', t.keys, ...args];
    }
    t.server = await imgServe(['--port', '0', '--shared', '0', '--persistent', ...args, t.file]);
    t.port = portOf(t.server.uris[0]);
  });
  after(async () => assert.equal(await t.server.stop(), 0));
  return t;
}
