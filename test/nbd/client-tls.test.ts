/**
 * img's NBD client over TLS: nbds:// and nbds+unix:// URIs with X.509 (tls-certificates) and
 * pre-shared keys (tls-psk-file, tls-username) against img serve and qemu-nbd; a CA that did
 * not sign the server, a name the certificate lacks, a server without TLS, a wrong or broken
 * key all fail with one line and no data.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { img, qemuCheck, RunResult, sha256File, tempDir } from '../helpers';
import { makeImage, makePki } from './pki';
import { imgServe, must, qemuNbd, Served } from './servers';

const MiB = 1 << 20;

const portOf = (uri: string): string => /:(\d+)\//.exec(uri)![1];

/** One `img: …` line on stderr, a nonzero status. */
function failsWith(r: RunResult, pattern: RegExp): void {
  assert.notEqual(r.status, 0, r.stdout);
  assert.match(r.stderr, /^img: [^\n]*\n$/);
  assert.match(r.stderr, pattern);
}

/** Reads `uri` with img info, convert and compare; the copy must equal qemu-img's raw conversion of `file`. */
function readsAs(uri: string, file: string, dir: string): void {
  const info = img('info', '--output=json', uri);
  assert.equal(info.status, 0, info.stderr);
  assert.equal(JSON.parse(info.stdout)['virtual-size'], 16 * MiB);
  const want = path.join(dir, 'want.raw');
  if (!fs.existsSync(want)) must('qemu-img', 'convert', '-O', 'raw', file, want);
  const out = path.join(dir, 'out.raw');
  const r = img('convert', '-O', 'raw', uri, out);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(sha256File(out), sha256File(want));
  fs.rmSync(out);
  const c = img('compare', uri, file);
  assert.equal(c.status, 0, c.stderr);
}

describe('nbds:// with X.509 certificates', () => {
  const dir = tempDir('img-nbd-ctls-');
  let pki: { server: string; client: string };
  let file: string;
  let server: Served;
  let port: string;

  before(async () => {
    pki = makePki(dir);
    file = makeImage(dir);
    server = await imgServe(['--port', '0', '--tls-creds', pki.server, '--shared', '0', '--persistent', '--read-only', file]);
    port = portOf(server.uris[0]);
  });
  after(async () => {
    assert.equal(await server.stop(), 0);
  });

  it('reads img serve over TCP by name and by IP address, and over a unix socket', async () => {
    readsAs(`nbds://localhost:${port}/?tls-certificates=${pki.client}`, file, dir);
    readsAs(`nbds://127.0.0.1:${port}/?tls-certificates=${pki.client}`, file, dir);
    const socket = path.join(dir, 'img.sock');
    const unix = await imgServe(['--socket', socket, '--tls-creds', pki.server, '--shared', '0', '--persistent', '--read-only', file]);
    try {
      readsAs(`nbds+unix:///?socket=${socket}&tls-certificates=${pki.client}`, file, dir);
    } finally {
      assert.equal(await unix.stop(), 0);
    }
  });

  it('reads and writes qemu-nbd exports with tls-creds-x509 over a unix socket', async () => {
    const tlsArgs = ['--object', `tls-creds-x509,id=tls0,dir=${pki.server},endpoint=server,verify-peer=off`, '--tls-creds', 'tls0'];
    const source = await qemuNbd(dir, [...tlsArgs, '-f', 'qcow2', '-r', '-t', file]);
    try {
      readsAs(`${source.uri}&tls-certificates=${pki.client}`.replace(/^nbd/, 'nbds'), file, dir);
    } finally {
      await source.stop();
    }
    const target = path.join(dir, 'target.qcow2');
    must('qemu-img', 'create', '-q', '-f', 'qcow2', target, '16M');
    must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xee 0 16M', target); // stale data the copy must zero
    const sink = await qemuNbd(dir, [...tlsArgs, '-f', 'qcow2', '-t', target]);
    try {
      const r = img('convert', '-n', '-O', 'raw', file, `${sink.uri}&tls-certificates=${pki.client}`.replace(/^nbd/, 'nbds'));
      assert.equal(r.status, 0, r.stderr);
    } finally {
      await sink.stop();
    }
    assert.match(must('qemu-img', 'compare', target, file), /identical/);
    assert.equal(qemuCheck(target).status, 0);
  });

  it('fails with one line, and no data, on a wrong CA, a wrong name, plaintext and a server without TLS', async () => {
    const other = path.join(dir, 'other');
    fs.mkdirSync(other);
    const stranger = makePki(other); // a second CA, which did not sign the server
    const out = path.join(dir, 'never.raw');
    failsWith(img('convert', '-O', 'raw', `nbds://localhost:${port}/?tls-certificates=${stranger.client}`, out), /certificate does not verify: self-signed certificate in certificate chain/);
    assert.equal(fs.existsSync(out), false);
    failsWith(img('info', `nbds://localhost:${port}/?tls-certificates=${pki.client}&tls-hostname=other.example`), /certificate does not verify: .*other\.example/);
    failsWith(img('info', `nbd://localhost:${port}/`), /the server requires TLS: use an nbds:\/\//);
    failsWith(img('info', `nbds://localhost:${port}/?tls-certificates=${path.join(dir, 'nope')}`), /nope: no such file/);
    const plain = await imgServe(['--port', '0', '--shared', '0', '--persistent', '--read-only', file]);
    try {
      failsWith(img('compare', `nbds://127.0.0.1:${portOf(plain.uris[0])}/?tls-certificates=${pki.client}`, file), /the server does not support TLS/);
    } finally {
      assert.equal(await plain.stop(), 0);
    }
    const q = await qemuNbd(dir, ['-f', 'qcow2', '-r', file]);
    try {
      failsWith(img('info', `${q.uri}&tls-certificates=${pki.client}`.replace(/^nbd/, 'nbds')), /the server does not support TLS/);
    } finally {
      await q.stop();
    }
  });
});

describe('nbds:// with pre-shared keys', () => {
  const dir = tempDir('img-nbd-cpsk-');
  let file: string;
  let keys: string;
  let server: Served;
  let port: string;

  before(async () => {
    file = makeImage(dir);
    fs.mkdirSync(path.join(dir, 'psk'));
    keys = path.join(dir, 'psk', 'keys.psk'); // qemu's tls-creds-psk reads dir/keys.psk
    fs.writeFileSync(keys, `alice:${randomBytes(32).toString('hex')}\nbob:${randomBytes(16).toString('hex')}\n`);
    server = await imgServe(['--port', '0', '--tls-psk', keys, '--shared', '0', '--persistent', '--read-only', file]);
    port = portOf(server.uris[0]);
  });
  after(async () => {
    assert.equal(await server.stop(), 0);
  });

  it('reads img serve and qemu-nbd with the key of the URI user or tls-username', async () => {
    readsAs(`nbds://alice@localhost:${port}/?tls-psk-file=${keys}`, file, dir);
    readsAs(`nbds://127.0.0.1:${port}/?tls-psk-file=${keys}&tls-username=bob`, file, dir);
    const q = await qemuNbd(dir, ['--object', `tls-creds-psk,id=tls0,dir=${path.dirname(keys)},endpoint=server`, '--tls-creds', 'tls0', '-f', 'qcow2', '-r', '-t', file]);
    try {
      readsAs(`${q.uri}&tls-psk-file=${keys}&tls-username=alice`.replace(/^nbd/, 'nbds'), file, dir);
    } finally {
      await q.stop();
    }
  });

  it('fails with one line on a wrong key, an unknown username and a malformed key file', () => {
    const wrong = path.join(dir, 'wrong.psk');
    fs.writeFileSync(wrong, `alice:${randomBytes(32).toString('hex')}\n`);
    failsWith(img('info', `nbds://alice@localhost:${port}/?tls-psk-file=${wrong}`), /pre-shared key failed \(wrong key or username\?\)/);
    failsWith(img('info', `nbds://localhost:${port}/?tls-psk-file=${keys}&tls-username=mallory`), /keys\.psk: no key for the TLS username 'mallory'/);
    const bad = path.join(dir, 'bad.psk');
    fs.writeFileSync(bad, 'alice:nothex\n');
    failsWith(img('info', `nbds://alice@localhost:${port}/?tls-psk-file=${bad}`), /bad\.psk: line 1 is not "identity:hexkey"/);
    failsWith(img('info', `nbds://alice@localhost:${port}/?tls-psk-file=${path.join(dir, 'missing.psk')}`), /missing\.psk: no such file/);
  });
});
