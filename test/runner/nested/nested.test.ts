/**
 * End-to-end proof of the runner (test bed 2, /work/shared/notes/kvm-testbed.md): the stock
 * Debian cloud kernel boots through startVm to its init, finds /dev/vda, reads a known pattern,
 * writes one the host then finds in the image, and the VM exits with reason 'shutdown'; through
 * the file backend (raw image) and the NBD backend (`img serve` on a qcow2, in the same guest).
 * Without hardware KVM every test runs in its own outer Linux under qemu TCG (≈30–60 s each).
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { qemuCheck, qemuImg, tempDir } from '../../helpers';
import { DISK_BYTES, INNER_CMDLINE, innerReports, md5, readPattern, READ_BYTES, READ_OFFSET, WRITE_BYTES, WRITE_OFFSET, writePattern, writeTestDisk } from './inner';
import { runScript, unavailable } from './outer';

const ENGINE = process.env.IMG_NESTED_ENGINE ?? 'runner';
// A loaded 2-core machine makes the outer TCG guest several times slower than its usual 30–60 s.
const TIMEOUT_MS = 600_000;
const skip = unavailable();

/** The guest-run command line for one inner boot with these --disk arguments. */
function boot(nonce: string, disk: string): string {
  return `"$NODE" "$GUEST_RUN" --engine ${ENGINE} --kernel "$KERNEL" --initrd "$INITRD" --disk ${disk} --timeout ${TIMEOUT_MS - 60_000} --cmdline "${INNER_CMDLINE} nested.nonce=${nonce}"\n`;
}

/** The image as the inner guest should leave it: the read pattern, its write, zeros elsewhere. */
function expectedDisk(nonce: string): Buffer {
  const d = Buffer.alloc(DISK_BYTES);
  readPattern().copy(d, READ_OFFSET);
  writePattern(nonce).copy(d, WRITE_OFFSET);
  return d;
}

/**
 * The inner guest's reports and the VM's exit, checked against what the host put and expects;
 * on a read-only disk the write must fail and the region read back unchanged (zeros).
 */
function assertInnerRun(output: string, nonce: string, readOnly = false): void {
  const exit = /@@vm:exit (\{[^\r\n]*\})/.exec(output);
  if (!exit) assert.fail(`no VM exit reported:\n${output}`);
  assert.deepEqual(JSON.parse(exit[1]), { reason: 'shutdown', code: 0 }, output);
  const r = innerReports(output);
  assert.equal(r.get('init'), '1', `the inner init never ran:\n${output}`);
  assert.equal(r.get('sectors'), String(DISK_BYTES / 512), output);
  assert.equal(r.get('read'), md5(readPattern().subarray(0, READ_BYTES)), output);
  assert.equal(r.get('written'), md5(readOnly ? Buffer.alloc(WRITE_BYTES) : writePattern(nonce)), output);
  assert.equal(r.get('done'), '1', output);
  assert.equal(r.has('write-failed'), readOnly, output);
  for (const bad of ['insmod-failed', 'novda']) assert.ok(!r.has(bad), `${bad}:\n${output}`);
}

describe('runner end to end: stock kernel, busybox init, virtio-blk', { skip, timeout: 3 * TIMEOUT_MS }, () => {
  it('file backend: reads the pattern from a raw image and writes one the host sees', { timeout: TIMEOUT_MS + 30_000 }, async () => {
    const dir = tempDir('img-nested-file-');
    const disk = path.join(dir, 'disk.raw');
    writeTestDisk(disk);
    const nonce = randomBytes(6).toString('hex');
    const r = await runScript({ disk, script: boot(nonce, 'file:"$DISK"'), timeoutMs: TIMEOUT_MS, qemu: ENGINE === 'qemu' });
    assert.equal(r.status, 0, r.output);
    assertInnerRun(r.output, nonce);
    assert.ok(fs.readFileSync(disk).equals(expectedDisk(nonce)), 'the image does not hold what the guest wrote');
  });

  it('read-only file disk: the guest cannot write, the image stays as it was', { timeout: TIMEOUT_MS + 30_000 }, async () => {
    const dir = tempDir('img-nested-ro-');
    const disk = path.join(dir, 'disk.raw');
    writeTestDisk(disk);
    const before = fs.readFileSync(disk);
    const nonce = randomBytes(6).toString('hex');
    const r = await runScript({ disk, script: boot(nonce, 'file-ro:"$DISK"'), timeoutMs: TIMEOUT_MS, qemu: ENGINE === 'qemu' });
    assert.equal(r.status, 0, r.output);
    assertInnerRun(r.output, nonce, true);
    assert.ok(fs.readFileSync(disk).equals(before), 'a read-only disk was written');
  });

  it('NBD backend: img serve on a qcow2, the write lands in the qcow2', { timeout: TIMEOUT_MS + 30_000 }, async () => {
    const dir = tempDir('img-nested-nbd-');
    const raw = path.join(dir, 'disk.raw');
    const qcow2 = path.join(dir, 'disk.qcow2');
    writeTestDisk(raw);
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2);
    const nonce = randomBytes(6).toString('hex');
    // img serve exits by itself after its one client (the VM) disconnects, having flushed;
    // SIGTERM (flush, then exit 0) ends it if it is still there 30 s later (the VM never
    // connected). Not at once: a SIGTERM that lands while node is already exiting kills it.
    const script = `"$NODE" "$ROOT/bin/img" serve -f qcow2 --socket "$WORK/nbd.sock" "$DISK" &
serve=$!
i=0
while [ ! -S "$WORK/nbd.sock" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
${boot(nonce, 'nbd:"$WORK/nbd.sock"')}i=0
while kill -0 $serve 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
kill $serve 2>/dev/null
wait $serve
echo "@@serve:exit $?"
`;
    const r = await runScript({ disk: qcow2, script, timeoutMs: TIMEOUT_MS, qemu: ENGINE === 'qemu' });
    assert.equal(r.status, 0, r.output);
    assertInnerRun(r.output, nonce);
    assert.match(r.output, /@@serve:exit 0/);
    assert.equal(qemuCheck(qcow2).status, 0, 'qemu-img check finds the qcow2 damaged');
    qemuImg('convert', '-f', 'qcow2', '-O', 'raw', qcow2, raw);
    assert.ok(fs.readFileSync(raw).equals(expectedDisk(nonce)), 'the qcow2 does not hold what the guest wrote');
  });
});
