/**
 * NBD_OPT_STARTTLS with X.509 certificates (made here with openssl) and with pre-shared keys
 * (psktool's "identity:hexkey" file), with nbdinfo and qemu-img as the clients; plaintext is
 * refused when TLS is required and accepted alongside TLS with --tls=allow.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { img, run, tempDir } from '../helpers';
import { makeImage, makePki } from './pki';
import { imgServe, must, Served } from './servers';

const MiB = 1 << 20;

const portOf = (uri: string): string => /:(\d+)\//.exec(uri)![1];

/** qemu-img info through a TLS object; returns the parsed JSON. */
function qemuInfo(object: string, port: string): Record<string, unknown> {
  const opts = `driver=nbd,server.type=inet,server.host=localhost,server.port=${port},tls-creds=tls0`;
  return JSON.parse(must('qemu-img', 'info', '--output=json', '--object', object, '--image-opts', opts));
}

describe('img serve --tls-creds (X.509)', () => {
  const dir = tempDir('img-nbd-tls-');
  let pki: { server: string; client: string };
  let file: string;
  let server: Served;
  let port: string;

  before(async () => {
    pki = makePki(dir);
    file = makeImage(dir);
    server = await imgServe(['--port', '0', '--tls-creds', pki.server, '--shared', '0', '--persistent', file]);
    port = portOf(server.uris[0]);
  });
  after(async () => {
    assert.equal(await server.stop(), 0);
  });

  it('nbdinfo and nbdcopy connect with TLS and read the image', () => {
    const uri = `nbds://localhost:${port}/?tls-certificates=${pki.client}`;
    const info = JSON.parse(must('nbdinfo', '--json', uri));
    assert.equal(info.TLS, true);
    assert.equal(info.exports[0]['export-size'], 16 * MiB);
    const out = path.join(dir, 'out.raw');
    must('nbdcopy', uri, out);
    assert.match(must('qemu-img', 'compare', '-f', 'raw', out, file), /identical/);
  });

  it('qemu-img reads it with tls-creds-x509', () => {
    const info = qemuInfo(`tls-creds-x509,id=tls0,dir=${pki.client},endpoint=client`, port);
    assert.equal(info['virtual-size'], 16 * MiB);
  });

  it('refuses plaintext clients', () => {
    const r = run('nbdinfo', [`nbd://localhost:${port}/`]);
    assert.notEqual(r.status, 0);
    assert.notEqual(run('qemu-img', ['info', `nbd://localhost:${port}/`]).status, 0);
  });
});

describe('img serve --tls-psk', () => {
  const dir = tempDir('img-nbd-psk-');
  let file: string;
  let keys: string;
  let server: Served;
  let port: string;

  before(async () => {
    file = makeImage(dir);
    const pskDir = path.join(dir, 'psk');
    fs.mkdirSync(pskDir);
    keys = path.join(pskDir, 'keys.psk');
    fs.writeFileSync(keys, `alice:${randomBytes(32).toString('hex')}\n`);
    server = await imgServe(['--port', '0', '--tls-psk', keys, '--shared', '0', '--persistent', file]);
    port = portOf(server.uris[0]);
  });
  after(async () => {
    assert.equal(await server.stop(), 0);
  });

  it('nbdinfo and qemu-img connect with the key', () => {
    const info = JSON.parse(must('nbdinfo', '--json', `nbds://alice@localhost:${port}/?tls-psk-file=${keys}`));
    assert.equal(info.TLS, true);
    assert.equal(info.exports[0]['export-size'], 16 * MiB);
    const q = qemuInfo(`tls-creds-psk,id=tls0,dir=${path.dirname(keys)},username=alice,endpoint=client`, port);
    assert.equal(q['virtual-size'], 16 * MiB);
  });

  it('refuses a wrong key, an unknown identity and plaintext', () => {
    const wrong = path.join(dir, 'wrong.psk');
    fs.writeFileSync(wrong, `alice:${randomBytes(32).toString('hex')}\nmallory:${randomBytes(32).toString('hex')}\n`);
    assert.notEqual(run('nbdinfo', [`nbds://alice@localhost:${port}/?tls-psk-file=${wrong}`]).status, 0);
    assert.notEqual(run('nbdinfo', [`nbds://mallory@localhost:${port}/?tls-psk-file=${wrong}`]).status, 0);
    assert.notEqual(run('nbdinfo', [`nbd://localhost:${port}/`]).status, 0);
    // The server is still there for the right key.
    assert.equal(run('nbdinfo', [`nbds://alice@localhost:${port}/?tls-psk-file=${keys}`]).status, 0);
  });
});

describe('img serve --tls=allow and bad credentials', () => {
  it('accepts plaintext and TLS clients alike with --tls=allow', async () => {
    const dir = tempDir('img-nbd-psk-');
    const file = makeImage(dir);
    const keys = path.join(dir, 'keys.psk');
    fs.writeFileSync(keys, `bob:${randomBytes(16).toString('hex')}\n`);
    const server = await imgServe(['--port', '0', '--tls-psk', keys, '--tls=allow', '--persistent', file]);
    try {
      const port = portOf(server.uris[0]);
      assert.equal(JSON.parse(must('nbdinfo', '--json', `nbd://localhost:${port}/`)).TLS, false);
      assert.equal(JSON.parse(must('nbdinfo', '--json', `nbds://bob@localhost:${port}/?tls-psk-file=${keys}`)).TLS, true);
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });

  it('rejects a malformed PSK file and a missing certificate directory with one clear line', () => {
    const dir = tempDir('img-nbd-psk-');
    const file = makeImage(dir);
    const keys = path.join(dir, 'bad.psk');
    fs.writeFileSync(keys, 'alice:nothex\n');
    const r = img('serve', '--port', '0', '--tls-psk', keys, file);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /bad\.psk: line 1 is not "identity:hexkey"/);
    const m = img('serve', '--port', '0', '--tls-creds', path.join(dir, 'nope'), file);
    assert.equal(m.status, 1);
    assert.match(m.stderr, /server-cert\.pem: no such file/);
  });
});
