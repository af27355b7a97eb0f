/**
 * Issue 8's boot bench on the nested test bed: time from `img boot --engine native disk.qcow2
 * -- true` to its exit vs the same with `--engine qemu` (qemu-system-x86_64 with KVM: inside the
 * outer guest /dev/kvm is kvm_amd with the svm flag, so img picks -accel kvm). Run by
 * bench/boot-nested.sh. All boots share one outer guest (inner boots there showed no slow-down
 * over a few runs); engines alternate, the order flipping each round; best of ROUNDS. Times are
 * the outer guest's /proc/uptime around each whole img process (node's start included).
 *   node dist/test/runner/nested/bench-boot.js [ROUNDS]
 */
import * as path from 'node:path';
import { run, tempDir } from '../../helpers';
import { APPLIANCE_MODULES, runScript } from './outer';

const ENGINES = ['native', 'qemu'];
const BOOT_TIMEOUT_S = 240;

async function main(): Promise<void> {
  const rounds = Number(process.argv[2] ?? 3);
  const dir = tempDir('img-bench-boot-nested-');
  const raw = path.join(dir, 'disk.raw');
  const disk = path.join(dir, 'disk.qcow2');
  for (const [cmd, ...args] of [['mkfs.ext4', '-q', '-F', raw, '32M'], ['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw, disk]]) {
    const r = run(cmd, args);
    if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
  }
  const order = Array.from({ length: rounds }, (_, i) => (i % 2 === 0 ? ENGINES : [...ENGINES].reverse()).map((e) => [i + 1, e] as const)).flat();
  const script = `cd "$WORK" || exit 1
up() { cut -d' ' -f1 /proc/uptime; }
${order
  .map(
    ([round, engine]) => `t=$(up); "$NODE" "$ROOT/bin/img" boot --engine ${engine} -f qcow2 -t ${BOOT_TIMEOUT_S} disk.qcow2 -- true; rc=$?
echo "@@bench:${round} ${engine} $rc $t $(up)"
`,
  )
  .join('')}`;
  const r = await runScript({ files: [disk], script, qemu: true, kernelModules: APPLIANCE_MODULES, timeoutMs: (rounds * 2 * BOOT_TIMEOUT_S + 300) * 1000 });
  const best = new Map<string, number>();
  let seen = 0;
  for (const m of r.output.matchAll(/@@bench:(\d+) (\w+) (\d+) ([\d.]+) ([\d.]+)/g)) {
    const [, round, engine, rc, t0, t1] = m;
    const s = Number(t1) - Number(t0);
    seen++;
    console.log(`round ${round} ${engine.padEnd(6)} (${r.mode}): ${s.toFixed(2)} s${rc === '0' ? '' : ` FAILED (exit ${rc})`}`);
    if (rc === '0') best.set(engine, Math.min(best.get(engine) ?? Infinity, s));
  }
  if (seen !== order.length) process.stderr.write(`bench: ${seen} of ${order.length} boots reported:\n${r.output}\n`);
  const [a, b] = ENGINES.map((e) => best.get(e));
  console.log(`best img boot ... -- true: native ${a?.toFixed(2) ?? '-'} s, qemu (KVM) ${b?.toFixed(2) ?? '-'} s`);
  if (a !== undefined && b !== undefined) console.log(`ratio native/qemu: ${(a / b).toFixed(2)} (below 1: the native engine is faster)`);
  else process.exitCode = 1;
}

void main();
