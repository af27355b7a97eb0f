/**
 * NBD_OPT_STARTTLS with X.509 certificates (made here with openssl) and with pre-shared keys
 * (psktool's "identity:hexkey" file), with nbdinfo and qemu-img as the clients; plaintext is
 * refused when TLS is required and accepted alongside TLS with --tls=allow.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { img, run, tempDir } from '../helpers';
import { makeClientCert, makeImage, servedWithTls } from './pki';
import { imgServe, must, portOf } from './servers';

const MiB = 1 << 20;

/** qemu-img info through a TLS object; returns the parsed JSON. */
function qemuInfo(object: string, port: string): Record<string, unknown> {
  const opts = `driver=nbd,server.type=inet,server.host=localhost,server.port=${port},tls-creds=tls0`;
  return JSON.parse(must('qemu-img', 'info', '--output=json', '--object', object, '--image-opts', opts));
}

describe('img serve --tls-creds (X.509)', () => {
  const t = servedWithTls('img-nbd-tls-', 'x509');

  it('nbdinfo and nbdcopy connect with TLS and read the image', () => {
    const uri = `nbds://localhost:${t.port}/?tls-certificates=${t.pki.client}`;
    const info = JSON.parse(must('nbdinfo', '--json', uri));
    assert.equal(info.TLS, true);
    assert.equal(info.exports[0]['export-size'], 16 * MiB);
    const out = path.join(t.dir, 'out.raw');
    must('nbdcopy', uri, out);
    assert.match(must('qemu-img', 'compare', '-f', 'raw', out, t.file), /identical/);
  });

  it('qemu-img reads it with tls-creds-x509', () => {
    const info = qemuInfo(`tls-creds-x509,id=tls0,dir=${t.pki.client},endpoint=client`, t.port);
    assert.equal(info['virtual-size'], 16 * MiB);
  });

  it('refuses plaintext clients', () => {
    const r = run('nbdinfo', [`nbd://localhost:${t.port}/`]);
    assert.notEqual(r.status, 0);
    assert.notEqual(run('qemu-img', ['info', `nbd://localhost:${t.port}/`]).status, 0);
  });
});

describe('img serve --tls-creds --tls-verify-peer', () => {
  const t = servedWithTls('img-nbd-tls-peer-', 'x509', ['--tls-verify-peer']);

  it('serves clients whose certificate the CA signed: nbdinfo, qemu-img and img alike', () => {
    const alice = makeClientCert(t.dir, 'alice');
    const info = JSON.parse(must('nbdinfo', '--json', `nbds://localhost:${t.port}/?tls-certificates=${alice}`));
    assert.equal(info.exports[0]['export-size'], 16 * MiB);
    assert.equal(qemuInfo(`tls-creds-x509,id=tls0,dir=${alice},endpoint=client`, t.port)['virtual-size'], 16 * MiB);
    const r = img('compare', '-f', 'qcow2', t.file, `nbds://localhost:${t.port}/?tls-certificates=${alice}`);
    assert.equal(r.status, 0, r.stderr);
  });

  it('refuses clients without a certificate or with one another CA signed, and keeps serving', () => {
    assert.notEqual(run('nbdinfo', ['--size', `nbds://localhost:${t.port}/?tls-certificates=${t.pki.client}`]).status, 0);
    const bare = img('info', `nbds://localhost:${t.port}/?tls-certificates=${t.pki.client}`);
    assert.notEqual(bare.status, 0);
    assert.match(bare.stderr, /^img: .*requires a client certificate.*\n$/);
    const other = path.join(t.dir, 'other');
    fs.mkdirSync(other);
    must('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(other, 'ca-key.pem'), '-out', path.join(other, 'ca-cert.pem'), '-days', '2', '-subj', '/CN=other CA');
    const mallory = makeClientCert(t.dir, 'mallory', other);
    assert.notEqual(run('nbdinfo', ['--size', `nbds://localhost:${t.port}/?tls-certificates=${mallory}`]).status, 0);
    assert.equal(must('nbdinfo', '--size', `nbds://localhost:${t.port}/?tls-certificates=${path.join(t.dir, 'alice')}`).trim(), String(16 * MiB));
  });

  it('needs X.509 credentials with a CA', () => {
    const noCa = path.join(t.dir, 'no-ca');
    fs.mkdirSync(noCa);
    for (const f of ['server-cert.pem', 'server-key.pem']) fs.copyFileSync(path.join(t.pki.server, f), path.join(noCa, f));
    const r = img('serve', '--port', '0', '--tls-creds', noCa, '--tls-verify-peer', t.file);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^img: .*ca-cert\.pem/);
    const p = img('serve', '--port', '0', '--tls-psk', path.join(t.dir, 'x.psk'), '--tls-verify-peer', t.file);
    assert.match(p.stderr, /^img: --tls-verify-peer needs --tls-creds/);
  });
});

describe('img serve --tls-psk', () => {
  const t = servedWithTls('img-nbd-psk-', 'psk');

  it('nbdinfo and qemu-img connect with the key', () => {
    const info = JSON.parse(must('nbdinfo', '--json', `nbds://alice@localhost:${t.port}/?tls-psk-file=${t.keys}`));
    assert.equal(info.TLS, true);
    assert.equal(info.exports[0]['export-size'], 16 * MiB);
    const q = qemuInfo(`tls-creds-psk,id=tls0,dir=${path.dirname(t.keys)},username=alice,endpoint=client`, t.port);
    assert.equal(q['virtual-size'], 16 * MiB);
  });

  it('refuses a wrong key, an unknown identity and plaintext', () => {
    const wrong = path.join(t.dir, 'wrong.psk');
    fs.writeFileSync(wrong, `alice:${randomBytes(32).toString('hex')}\nmallory:${randomBytes(32).toString('hex')}\n`);
    assert.notEqual(run('nbdinfo', [`nbds://alice@localhost:${t.port}/?tls-psk-file=${wrong}`]).status, 0);
    assert.notEqual(run('nbdinfo', [`nbds://mallory@localhost:${t.port}/?tls-psk-file=${wrong}`]).status, 0);
    assert.notEqual(run('nbdinfo', [`nbd://localhost:${t.port}/`]).status, 0);
    // The server is still there for the right key.
    assert.equal(run('nbdinfo', [`nbds://alice@localhost:${t.port}/?tls-psk-file=${t.keys}`]).status, 0);
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
