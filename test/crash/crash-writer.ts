/**
 * The victim of the crash tests: opens an image and writes, zeroes, discards and compresses
 * (where the format can) at random until it is killed. Before operation N starts it prints
 * `s N`, and when the flush that is operation N has finished, `f N`: every operation before
 * it is then durable. Operations come from a seeded PRNG, so the test replays them. The lines
 * are written synchronously so that none is lost when the process is killed.
 *   node crash-writer.js FORMAT IMAGE SEED [OPEN-OPTIONS-JSON]
 */
import * as fs from 'node:fs';
import { openImage, OpenImageOptions } from '../../src/formats/index';
import { CRASH_CLUSTER, crashOps } from './crash-ops';

async function main(): Promise<void> {
  const [format, file, seedText, open] = process.argv.slice(2);
  const image = await openImage(file, { format, ...(open ? (JSON.parse(open) as OpenImageOptions) : {}) });
  let n = 0;
  for (const op of crashOps(Number(seedText), image.size, image.writeCompressed ? image.clusterSize : CRASH_CLUSTER)) {
    fs.writeSync(1, `s ${n}\n`);
    switch (op.kind) {
      case 'write':
        await image.write(op.offset, op.data!);
        break;
      case 'compressed':
        await (image.writeCompressed ? image.writeCompressed(op.offset, op.data!) : image.write(op.offset, op.data!));
        break;
      case 'zero':
        await image.writeZeroes(op.offset, op.length, { mayUnmap: op.mayUnmap });
        break;
      case 'discard':
        await image.discard(op.offset, op.length);
        break;
      case 'flush':
        await image.flush();
        fs.writeSync(1, `f ${n}\n`);
        break;
    }
    n++;
  }
}

main().catch((err) => {
  process.stderr.write(`crash-writer: ${err instanceof Error ? err.stack : err}\n`);
  process.exit(1);
});
