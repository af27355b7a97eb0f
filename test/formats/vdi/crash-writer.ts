/**
 * The victim of the VDI crash test: writes, zeroes and discards at random (the shared
 * crash-ops stream; its whole-cluster "compressed" writes become plain writes) until killed,
 * printing `s N` before operation N and `f N` when the flush that is operation N finished.
 *   node crash-writer.js IMAGE SEED
 */
import * as fs from 'node:fs';
import { openImage } from '../../../src/formats/index';
import { crashOps } from '../../crash/crash-ops';

async function main(): Promise<void> {
  const [file, seedText] = process.argv.slice(2);
  const image = await openImage(file, { format: 'vdi' });
  let n = 0;
  for (const op of crashOps(Number(seedText), image.size, 64 * 1024)) {
    fs.writeSync(1, `s ${n}\n`);
    if (op.kind === 'write' || op.kind === 'compressed') await image.write(op.offset, op.data!);
    else if (op.kind === 'zero') await image.writeZeroes(op.offset, op.length, { mayUnmap: op.mayUnmap });
    else if (op.kind === 'discard') await image.discard(op.offset, op.length);
    else {
      await image.flush();
      fs.writeSync(1, `f ${n}\n`);
    }
    n++;
  }
}

main().catch((err) => {
  process.stderr.write(`crash-writer: ${err instanceof Error ? err.stack : err}\n`);
  process.exit(1);
});
