/**
 * `img boot --engine native` end to end on the nested test bed (issue 8's native engine): a qcow2
 * holding an ext4 filesystem with test.sh; `img boot --engine native disk.qcow2 -- sh test.sh`
 * runs it in the stock kernel's appliance through the runner; its output and exit status come
 * back, and the file it writes is in the image afterwards.
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { qemuImg, run, tempDir } from '../../helpers';
import { runScript, unavailable } from './outer';

const TIMEOUT_MS = 600_000;
/** What img boot's appliance loads for an ext4 filesystem on virtio-blk. */
const APPLIANCE_MODULES = ['virtio_pci', 'virtio_blk', 'ext4'];

function skipReason(): string | undefined {
  if (run('mkfs.ext4', ['-V']).status !== 0 || run('debugfs', ['-V']).status !== 0) return 'no mkfs.ext4/debugfs (e2fsprogs)';
  return unavailable();
}

describe('img boot --engine native, nested', { skip: skipReason(), timeout: TIMEOUT_MS + 60_000 }, () => {
  it('runs test.sh from an ext4 qcow2: output, exit status and the file it writes come back', { timeout: TIMEOUT_MS + 30_000 }, async () => {
    const dir = tempDir('img-nested-boot-');
    const files = path.join(dir, 'files');
    fs.mkdirSync(files);
    const nonce = randomBytes(6).toString('hex');
    fs.writeFileSync(path.join(files, 'test.sh'), `echo "nested boot says ${nonce}"\necho "written by the guest ${nonce}" > out.txt\nexit 7\n`);
    const raw = path.join(dir, 'disk.raw');
    const qcow2 = path.join(dir, 'disk.qcow2');
    const mkfs = run('mkfs.ext4', ['-q', '-F', '-d', files, raw, '32M']);
    assert.equal(mkfs.status, 0, mkfs.stderr);
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2);

    const script = `cd "$WORK" && "$NODE" "$ROOT/bin/img" boot --engine native -f qcow2 -t ${TIMEOUT_MS / 1000 - 60} "$DISK" -- sh test.sh
echo "@@boot:exit $?"
`;
    const r = await runScript({ disk: qcow2, script, timeoutMs: TIMEOUT_MS, kernelModules: APPLIANCE_MODULES });
    assert.equal(r.status, 0, r.output);
    assert.match(r.output, new RegExp(`nested boot says ${nonce}`), r.output);
    assert.match(r.output, /@@boot:exit 7\b/, r.output);

    qemuImg('convert', '-f', 'qcow2', '-O', 'raw', qcow2, raw);
    assert.equal(run('e2fsck', ['-fn', raw]).status, 0, 'e2fsck finds the filesystem damaged');
    const out = run('debugfs', ['-R', 'cat /out.txt', raw]);
    assert.equal(out.stdout, `written by the guest ${nonce}\n`, out.stderr);
  });
});
