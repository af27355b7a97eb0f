/**
 * `img boot --engine native` end to end on the nested test bed (issue 8's native engine): images
 * holding an ext4 filesystem with test.sh — a qcow2, a monolithicSparse vmdk and a two-layer
 * qcow2 chain — each booted with `img boot --engine native IMAGE -- sh test.sh` in the stock
 * kernel's appliance through the runner. The three boots share one outer guest (one script, a
 * status line each); output and exit status come back, and the file each writes is in its
 * image afterwards (for the chain: in the overlay, the base unchanged).
 */
import * as assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { before, describe, it } from 'node:test';
import { qemuCheck, qemuImg, run, sha256File, tempDir } from '../../helpers';
import { APPLIANCE_MODULES, runScript, ScriptResult, unavailable } from './outer';

const TIMEOUT_MS = 900_000;
/** Each inner boot's own limit (img boot -t), well inside the outer one. */
const BOOT_TIMEOUT_S = 240;

function skipReason(): string | undefined {
  if (run('mkfs.ext4', ['-V']).status !== 0 || run('debugfs', ['-V']).status !== 0) return 'no mkfs.ext4/debugfs (e2fsprogs)';
  return unavailable();
}

/** One image booted in the shared outer guest: the file img boot opens and its format. */
interface Case {
  name: string;
  format: string;
  nonce: string;
}

/** A 32 MiB ext4 raw image holding test.sh, which prints and writes its nonce and exits 7. */
function ext4WithTestScript(dir: string, raw: string, nonce: string): void {
  const files = path.join(dir, `files-${nonce}`);
  fs.mkdirSync(files);
  fs.writeFileSync(path.join(files, 'test.sh'), `echo "nested boot says ${nonce}"\necho "written by the guest ${nonce}" > out.txt\nexit 7\n`);
  const mkfs = run('mkfs.ext4', ['-q', '-F', '-d', files, raw, '32M']);
  assert.equal(mkfs.status, 0, mkfs.stderr);
}

/** The image (or chain) as raw, fsck'd; what /out.txt holds, or undefined when it is absent. */
function outTxt(dir: string, image: string, format: string): string | undefined {
  const raw = path.join(dir, 'check.raw');
  qemuImg('convert', '-f', format, '-O', 'raw', image, raw);
  try {
    const fsck = run('e2fsck', ['-fn', raw]);
    assert.equal(fsck.status, 0, `e2fsck finds the filesystem of ${path.basename(image)} damaged:\n${fsck.stdout}`);
    const out = run('debugfs', ['-R', 'cat /out.txt', raw]);
    return /not found/i.test(out.stderr) ? undefined : out.stdout;
  } finally {
    fs.rmSync(raw, { force: true });
  }
}

describe('img boot --engine native, nested: qcow2, vmdk, qcow2 chain', { skip: skipReason(), timeout: TIMEOUT_MS + 120_000 }, () => {
  const dir = tempDir('img-nested-boot-');
  const file = (name: string) => path.join(dir, name);
  const cases: Case[] = [
    { name: 'disk.qcow2', format: 'qcow2', nonce: randomBytes(6).toString('hex') },
    { name: 'disk.vmdk', format: 'vmdk', nonce: randomBytes(6).toString('hex') },
    { name: 'overlay.qcow2', format: 'qcow2', nonce: randomBytes(6).toString('hex') },
  ];
  let baseHash = '';
  let r: ScriptResult;

  before(
    async () => {
      const [qcow2, vmdk, chain] = cases;
      const raw = file('disk.raw');
      ext4WithTestScript(dir, raw, qcow2.nonce);
      qemuImg('convert', '-f', 'raw', '-O', 'qcow2', raw, file(qcow2.name));
      ext4WithTestScript(dir, raw, vmdk.nonce);
      qemuImg('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', raw, file(vmdk.name));
      ext4WithTestScript(dir, raw, chain.nonce);
      qemuImg('convert', '-f', 'raw', '-O', 'qcow2', raw, file('base.qcow2'));
      // Relative backing name: the chain still resolves where the pair lands in the outer guest.
      qemuImg('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', file(chain.name));
      fs.rmSync(raw);
      baseHash = sha256File(file('base.qcow2'));

      const script = cases
        .map(
          (c) => `t=$(date +%s)
"$NODE" "$ROOT/bin/img" boot --engine native -f ${c.format} -t ${BOOT_TIMEOUT_S} ${c.name} -- sh test.sh
echo "@@boot:${c.name} exit $? after $(( $(date +%s) - t )) s"
`,
        )
        .join('');
      const files = [...cases.map((c) => file(c.name)), file('base.qcow2')];
      r = await runScript({ files, script: `cd "$WORK" || exit 1\n${script}`, timeoutMs: TIMEOUT_MS, kernelModules: APPLIANCE_MODULES });
      assert.equal(r.status, 0, r.output);
    },
    { timeout: TIMEOUT_MS + 60_000 },
  );

  /** The boot of one case printed test.sh's output and exited with its status. */
  function assertBooted(c: Case): void {
    assert.match(r.output, new RegExp(`nested boot says ${c.nonce}`), r.output);
    assert.match(r.output, new RegExp(`@@boot:${c.name.replace('.', '\\.')} exit 7 `), r.output);
  }

  it('qcow2: output, exit status and the file test.sh writes come back', () => {
    const c = cases[0];
    assertBooted(c);
    assert.equal(qemuCheck(file(c.name)).status, 0, 'qemu-img check finds the qcow2 damaged');
    assert.equal(outTxt(dir, file(c.name), 'qcow2'), `written by the guest ${c.nonce}\n`);
  });

  it('vmdk (monolithicSparse): output, exit status and the file test.sh writes come back', () => {
    const c = cases[1];
    assertBooted(c);
    assert.equal(qemuCheck(file(c.name)).status, 0, 'qemu-img check finds the vmdk damaged');
    assert.equal(outTxt(dir, file(c.name), 'vmdk'), `written by the guest ${c.nonce}\n`);
  });

  it('two-layer qcow2 chain: the write lands in the overlay, the base is unchanged', () => {
    const c = cases[2];
    assertBooted(c);
    assert.equal(sha256File(file('base.qcow2')), baseHash, 'the base image changed');
    assert.equal(qemuCheck(file('base.qcow2')).status, 0, 'qemu-img check finds the base damaged');
    assert.equal(qemuCheck(file(c.name)).status, 0, 'qemu-img check finds the overlay damaged');
    assert.equal(outTxt(dir, file(c.name), 'qcow2'), `written by the guest ${c.nonce}\n`);
    assert.equal(outTxt(dir, file('base.qcow2'), 'qcow2'), undefined, 'the base holds the file the guest wrote');
  });
});
