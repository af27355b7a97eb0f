/**
 * img snapshot's command line against qemu-img snapshot: the list, byte for byte (names
 * padded by bytes as printf pads them), the same snapshots in img info, the JSON list, names
 * cut as qemu-img cuts them, and failures with qemu-img's wording and exit status.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { before, describe, it } from 'node:test';
import { qemuImg, tempDir } from '../helpers';
import { both, imgIn, qemuIn } from './run';

describe('img snapshot against qemu-img snapshot', () => {
  const dir = tempDir('img-cli-snapshot-');
  const ok = (...args: string[]) => {
    const r = imgIn(dir, ...args);
    assert.equal(r.status, 0, `img ${args.join(' ')}: ${r.stderr}`);
    return r;
  };

  before(() => {
    qemuImg('create', '-q', '-f', 'qcow2', `${dir}/a.qcow2`, '16M');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=4k', `${dir}/v2.qcow2`, '16M');
    for (const f of ['a.qcow2', 'v2.qcow2']) {
      ok('snapshot', '-c', 'plain', f);
      qemuIn(dir, 'snapshot', '-c', 'by qemu', f);
      ok('snapshot', '-c', 'ünïcödé name', f);
      ok('snapshot', '-c', 'a rather long snapshot name, longer than its column', f);
      ok('snapshot', '-c', '', f);
      qemuIn(dir, 'snapshot', '-c', 'ü', f);
    }
  });

  for (const f of ['a.qcow2', 'v2.qcow2']) {
    it(`-l of ${f} is qemu-img's, byte for byte`, () => {
      const r = both(dir, 'snapshot', '-l', f);
      assert.equal(r.img.status, 0, r.img.stderr);
      assert.equal(r.img.stdout, r.qemu.stdout);
      // No option is -l, as in qemu-img.
      assert.equal(imgIn(dir, 'snapshot', f).stdout, r.qemu.stdout);
    });
    it(`info of ${f} lists the same snapshots as qemu-img info`, () => {
      for (const output of ['human', 'json']) {
        const r = both(dir, 'info', `--output=${output}`, f);
        assert.equal(r.img.status, 0, r.img.stderr);
        assert.equal(r.img.stdout, r.qemu.stdout, output);
      }
    });
    it(`-l --output=json of ${f} is qemu-img info's snapshot list`, () => {
      const ours = JSON.parse(ok('snapshot', '-l', '--output=json', f).stdout);
      assert.deepEqual(ours, JSON.parse(qemuImg('info', '--output=json', `${dir}/${f}`)).snapshots);
    });
  }

  it('an image without snapshots lists nothing; its JSON list is empty', () => {
    qemuImg('create', '-q', '-f', 'qcow2', `${dir}/none.qcow2`, '1M');
    const r = both(dir, 'snapshot', '-l', 'none.qcow2');
    assert.equal(r.img.stdout, r.qemu.stdout);
    assert.equal(r.img.stdout, '');
    assert.equal(ok('snapshot', '-l', '--output=json', 'none.qcow2').stdout, '[]\n');
  });

  it('names longer than 255 bytes are cut as qemu-img cuts them', () => {
    for (const name of ['n'.repeat(300), 'é'.repeat(200)]) {
      for (const f of ['cut-img.qcow2', 'cut-qemu.qcow2']) qemuImg('create', '-q', '-f', 'qcow2', `${dir}/${f}`, '1M');
      ok('snapshot', '-c', name, 'cut-img.qcow2');
      qemuIn(dir, 'snapshot', '-c', name, 'cut-qemu.qcow2');
      const mine = JSON.parse(qemuImg('info', '--output=json', `${dir}/cut-img.qcow2`)).snapshots[0].name as string;
      const theirs = JSON.parse(qemuImg('info', '--output=json', `${dir}/cut-qemu.qcow2`)).snapshots[0].name as string;
      assert.ok(Buffer.byteLength(mine) <= 255 && mine === name.slice(0, mine.length));
      if (/^n+$/.test(name)) assert.equal(mine, theirs);
    }
  });

  it('failures: qemu-img wording, one line, exit status 1', () => {
    const cases: [string[], RegExp][] = [
      [['snapshot', '-a', 'nope', 'a.qcow2'], /^img: Could not apply snapshot 'nope': .*snapshot 'nope' not found\n$/],
      [['snapshot', '-d', 'nope', 'a.qcow2'], /^img: Could not delete snapshot 'nope': .*snapshot 'nope' not found\n$/],
      [['snapshot', '-l', '-c', 'x', 'a.qcow2'], /^img: Cannot mix '-l', '-a', '-c', '-d'\n$/],
      [['snapshot', '-a', 'x', '-d', 'y', 'a.qcow2'], /^img: Cannot mix/],
      [['snapshot', '-l', 'missing.qcow2'], /^img: missing\.qcow2: .*\n$/],
      [['snapshot', '-c', 'x', 'plain.raw'], /^WARNING: Image format was not specified for 'plain\.raw' and probing guessed raw\.\n[^]*img: Could not create snapshot 'x': .*the raw format does not support internal snapshots/],
      [['snapshot', '-a', 'x', 'plain.raw'], /\nimg: Could not apply snapshot 'x': /],
      [['snapshot', '-l', '--output=xml', 'a.qcow2'], /^img: --output must be human or json/],
    ];
    fs.writeFileSync(`${dir}/plain.raw`, Buffer.alloc(4096));
    for (const [args, want] of cases) {
      const r = both(dir, ...args);
      assert.equal(r.img.status, 1, `${args.join(' ')}: ${r.img.stderr}`);
      assert.notEqual(r.qemu.status, 0, `qemu-img ${args.join(' ')}`);
      assert.match(r.img.stderr, want, args.join(' '));
    }
    // img takes -f too (qemu-img snapshot does not).
    const f = imgIn(dir, 'snapshot', '-f', 'raw', '-c', 'x', 'plain.raw');
    assert.equal(f.status, 1);
    assert.match(f.stderr, /^img: Could not create snapshot 'x': /);
    // A raw image lists no snapshots, successfully, as in qemu-img.
    const r = both(dir, 'snapshot', '-l', 'plain.raw');
    assert.equal(r.img.status, 0);
    assert.equal(r.qemu.status, 0);
    assert.equal(r.img.stdout, r.qemu.stdout);
  });

  it('-q prints nothing; apply and delete print nothing anyway', () => {
    qemuImg('create', '-q', '-f', 'qcow2', `${dir}/quiet.qcow2`, '1M');
    for (const args of [
      ['-q', '-c', 'x'],
      ['-a', 'x'],
      ['-q', '-d', 'x'],
    ]) {
      const r = ok('snapshot', ...args, 'quiet.qcow2');
      assert.equal(r.stdout + r.stderr, '');
    }
  });
});
