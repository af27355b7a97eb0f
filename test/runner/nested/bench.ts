/**
 * Time from start to the inner guest's init marker, runner vs qemu-system-x86_64 -enable-kvm,
 * same kernel, initramfs and disk; run by bench/runner-nested.sh. Each boot gets a fresh outer
 * guest (repeated inner boots in one outer guest get slower); engines alternate; best of ROUNDS.
 *   node dist/test/runner/nested/bench.js [ROUNDS]
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tempDir } from '../../helpers';
import { innerReports, writeTestDisk } from './inner';
import { runScript } from './outer';

const ENGINES = ['runner', 'qemu'];

async function bootOnce(engine: string, dir: string): Promise<{ initMs?: number; totalS: number; ok: boolean; mode: string }> {
  const disk = path.join(dir, `disk-${engine}.raw`);
  writeTestDisk(disk);
  const t0 = Date.now();
  const r = await runScript({
    disk,
    qemu: engine === 'qemu',
    script: `"$NODE" "$GUEST_RUN" --engine ${engine} --kernel "$KERNEL" --initrd "$INITRD" --disk file:"$DISK" --cmdline "console=ttyS0 acpi=off reboot=t panic=-1 quiet nested.nonce=bench"\n`,
  });
  const totalS = (Date.now() - t0) / 1000;
  fs.rmSync(disk, { force: true });
  const init = /@@vm:init-ms (\d+)/.exec(r.output);
  const ok = innerReports(r.output).has('done') && /@@vm:exit \{"reason":"shutdown"/.test(r.output);
  if (!ok) process.stderr.write(`bench: ${engine} boot failed:\n${r.output}\n`);
  return { initMs: init ? Number(init[1]) : undefined, totalS, ok, mode: r.mode };
}

async function main(): Promise<void> {
  const rounds = Number(process.argv[2] ?? 3);
  const dir = tempDir('img-bench-nested-');
  const best = new Map<string, number>();
  for (let i = 0; i < rounds; i++) {
    for (const engine of i % 2 === 0 ? ENGINES : [...ENGINES].reverse()) {
      const r = await bootOnce(engine, dir);
      console.log(`round ${i + 1} ${engine.padEnd(6)} (${r.mode}): init marker ${r.initMs ?? '-'} ms, whole run ${r.totalS.toFixed(1)} s${r.ok ? '' : ' FAILED'}`);
      if (r.ok && r.initMs !== undefined) best.set(engine, Math.min(best.get(engine) ?? Infinity, r.initMs));
    }
  }
  const [a, b] = ENGINES.map((e) => best.get(e));
  console.log(`best time to the inner init marker: runner ${a ?? '-'} ms, qemu -enable-kvm ${b ?? '-'} ms`);
  if (a !== undefined && b !== undefined) console.log(`ratio runner/qemu: ${(a / b).toFixed(2)} (below 1: the runner is faster)`);
  if (a === undefined || b === undefined) process.exitCode = 1;
}

void main();
