/**
 * Credentials and an image for the TLS tests: a CA with a server certificate for localhost and
 * 127.0.0.1, in qemu's and libnbd's directory layouts (made with openssl).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { must } from './servers';

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

export function makeImage(dir: string): string {
  const file = path.join(dir, 'disk.qcow2');
  must('qemu-img', 'create', '-q', '-f', 'qcow2', file, '16M');
  must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 1M 3M', file);
  return file;
}
