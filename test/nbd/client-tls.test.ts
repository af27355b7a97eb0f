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
import { describe, it } from 'node:test';
import { img, qemuCheck, RunResult, sha256File } from '../helpers';
import { makePki, servedWithTls } from './pki';
import { imgServe, must, portOf, qemuNbd } from './servers';

const MiB = 1 << 20;

/** qemuNbd's nbd+unix URI as nbds+unix, with TLS query parameters. */
const withTls = (uri: string, query: string): string => `${uri.replace(/^nbd/, 'nbds')}&${query}`;

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
  const t = servedWithTls('img-nbd-ctls-', 'x509', ['--read-only']);

  it('reads img serve over TCP by name and by IP address, and over a unix socket', async () => {
    readsAs(`nbds://localhost:${t.port}/?tls-certificates=${t.pki.client}`, t.file, t.dir);
    readsAs(`nbds://127.0.0.1:${t.port}/?tls-certificates=${t.pki.client}`, t.file, t.dir);
    const socket = path.join(t.dir, 'img.sock');
    const unix = await imgServe(['--socket', socket, '--tls-creds', t.pki.server, '--shared', '0', '--persistent', '--read-only', t.file]);
    try {
      readsAs(`nbds+unix:///?socket=${socket}&tls-certificates=${t.pki.client}`, t.file, t.dir);
    } finally {
      assert.equal(await unix.stop(), 0);
    }
  });

  it('reads and writes qemu-nbd exports with tls-creds-x509 over a unix socket', async () => {
    const tlsArgs = ['--object', `tls-creds-x509,id=tls0,dir=${t.pki.server},endpoint=server,verify-peer=off`, '--tls-creds', 'tls0'];
    const source = await qemuNbd(t.dir, [...tlsArgs, '-f', 'qcow2', '-r', '-t', t.file]);
    try {
      readsAs(withTls(source.uri, `tls-certificates=${t.pki.client}`), t.file, t.dir);
    } finally {
      await source.stop();
    }
    const target = path.join(t.dir, 'target.qcow2');
    must('qemu-img', 'create', '-q', '-f', 'qcow2', target, '16M');
    must('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xee 0 16M', target); // stale data the copy must zero
    const sink = await qemuNbd(t.dir, [...tlsArgs, '-f', 'qcow2', '-t', target]);
    try {
      const r = img('convert', '-n', '-O', 'raw', t.file, withTls(sink.uri, `tls-certificates=${t.pki.client}`));
      assert.equal(r.status, 0, r.stderr);
    } finally {
      await sink.stop();
    }
    assert.match(must('qemu-img', 'compare', target, t.file), /identical/);
    assert.equal(qemuCheck(target).status, 0);
  });

  it('fails with one line, and no data, on a wrong CA, a wrong name, plaintext and a server without TLS', async () => {
    const other = path.join(t.dir, 'other');
    fs.mkdirSync(other);
    const stranger = makePki(other); // a second CA, which did not sign the server
    const out = path.join(t.dir, 'never.raw');
    failsWith(img('convert', '-O', 'raw', `nbds://localhost:${t.port}/?tls-certificates=${stranger.client}`, out), /certificate does not verify: self-signed certificate in certificate chain/);
    assert.equal(fs.existsSync(out), false);
    failsWith(img('info', `nbds://localhost:${t.port}/?tls-certificates=${t.pki.client}&tls-hostname=other.example`), /certificate does not verify: .*other\.example/);
    // A client that leaves right after the TLS handshake frees the only place of a --shared 1 server.
    const single = await imgServe(['--port', '0', '--tls-creds', t.pki.server, '--persistent', '--read-only', t.file]);
    try {
      const uri = `nbds://localhost:${portOf(single.uris[0])}/?tls-certificates=`;
      failsWith(img('info', uri + stranger.client), /certificate does not verify/);
      assert.equal(img('info', uri + t.pki.client).status, 0);
    } finally {
      assert.equal(await single.stop(), 0);
    }
    failsWith(img('info', `nbd://localhost:${t.port}/`), /the server requires TLS: use an nbds:\/\//);
    failsWith(img('info', `nbds://localhost:${t.port}/?tls-certificates=${path.join(t.dir, 'nope')}`), /nope: no such file/);
    const plain = await imgServe(['--port', '0', '--shared', '0', '--persistent', '--read-only', t.file]);
    try {
      failsWith(img('compare', `nbds://127.0.0.1:${portOf(plain.uris[0])}/?tls-certificates=${t.pki.client}`, t.file), /the server does not support TLS/);
    } finally {
      assert.equal(await plain.stop(), 0);
    }
    const q = await qemuNbd(t.dir, ['-f', 'qcow2', '-r', t.file]);
    try {
      failsWith(img('info', withTls(q.uri, `tls-certificates=${t.pki.client}`)), /the server does not support TLS/);
    } finally {
      await q.stop();
    }
  });
});

describe('nbds:// with pre-shared keys', () => {
  const t = servedWithTls('img-nbd-cpsk-', 'psk', ['--read-only']);

  it('reads img serve and qemu-nbd with the key of the URI user or tls-username', async () => {
    readsAs(`nbds://alice@localhost:${t.port}/?tls-psk-file=${t.keys}`, t.file, t.dir);
    readsAs(`nbds://127.0.0.1:${t.port}/?tls-psk-file=${t.keys}&tls-username=bob`, t.file, t.dir);
    const q = await qemuNbd(t.dir, ['--object', `tls-creds-psk,id=tls0,dir=${path.dirname(t.keys)},endpoint=server`, '--tls-creds', 'tls0', '-f', 'qcow2', '-r', '-t', t.file]);
    try {
      readsAs(withTls(q.uri, `tls-psk-file=${t.keys}&tls-username=alice`), t.file, t.dir);
    } finally {
      await q.stop();
    }
  });

  it('fails with one line on a wrong key, an unknown username and a malformed key file', () => {
    const wrong = path.join(t.dir, 'wrong.psk');
    fs.writeFileSync(wrong, `alice:${randomBytes(32).toString('hex')}\n`);
    failsWith(img('info', `nbds://alice@localhost:${t.port}/?tls-psk-file=${wrong}`), /pre-shared key failed \(wrong key or username\?\)/);
    failsWith(img('info', `nbds://localhost:${t.port}/?tls-psk-file=${t.keys}&tls-username=mallory`), /keys\.psk: no key for the TLS username 'mallory'/);
    const bad = path.join(t.dir, 'bad.psk');
    fs.writeFileSync(bad, 'alice:nothex\n');
    failsWith(img('info', `nbds://alice@localhost:${t.port}/?tls-psk-file=${bad}`), /bad\.psk: line 1 is not "identity:hexkey"/);
    failsWith(img('info', `nbds://alice@localhost:${t.port}/?tls-psk-file=${path.join(t.dir, 'missing.psk')}`), /missing\.psk: no such file/);
  });
});
