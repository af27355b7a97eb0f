/**
 * img check [-f fmt] [-r leaks|all] [--output=human|json] [-q] file
 * Exit status as qemu-img: 0 clean, 1 the check could not run, 2 corruptions, 3 leaks only,
 * 63 the format has no check.
 */
import { Command } from 'commander';
import { ImageError } from '../block/errors';
import { CheckReport, Image, RepairMode } from '../block/image';
import { findFormat, openImage, probeFormat } from '../formats/index';
import { action } from './command';
import { formatArg, outputFormat, say } from './common';
import { qjson, QValue } from './qjson';

export const CHECK_UNSUPPORTED = 63;

/** qemu-img check's exit status for a finished check. */
export function checkStatus(r: CheckReport): number {
  if (r.checkErrors) return 1;
  if (r.corruptions) return 2;
  if (r.leaks) return 3;
  return 0;
}

const nonZero = (n: number | undefined): number | undefined => (n ? n : undefined);

/** The report as qemu's ImageCheck object: zero counters are left out, as qemu does. */
export function checkJson(r: CheckReport): QValue {
  return {
    filename: r.filename,
    format: r.format,
    'check-errors': r.checkErrors,
    'image-end-offset': nonZero(r.imageEndOffset),
    corruptions: nonZero(r.corruptions),
    leaks: nonZero(r.leaks),
    'corruptions-fixed': nonZero(r.corruptionsFixed),
    'leaks-fixed': nonZero(r.leaksFixed),
    'total-clusters': nonZero(r.totalClusters),
    'allocated-clusters': nonZero(r.allocatedClusters),
    'fragmented-clusters': nonZero(r.fragmentedClusters),
    'compressed-clusters': nonZero(r.compressedClusters),
  };
}

const pct = (n: number, d: number): string => ((n * 100) / d).toFixed(2);

/** qemu-img check's human summary. */
export function checkHuman(r: CheckReport): string {
  let s = '';
  if (!(r.corruptions || r.leaks || r.checkErrors)) s += 'No errors were found on the image.\n';
  else {
    if (r.corruptions) {
      s += `\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    }
    if (r.leaks) s += `\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    if (r.checkErrors) s += `\n${r.checkErrors} internal errors have occurred during the check.\n`;
  }
  const total = r.totalClusters ?? 0;
  const allocated = r.allocatedClusters ?? 0;
  if (total && allocated) {
    s += `${allocated}/${total} = ${pct(allocated, total)}% allocated, ${pct(r.fragmentedClusters ?? 0, allocated)}% fragmented, ${pct(r.compressedClusters ?? 0, allocated)}% compressed clusters\n`;
  }
  if (r.imageEndOffset) s += `Image end offset: ${r.imageEndOffset}\n`;
  return s;
}

function repairMode(value: unknown): RepairMode | undefined {
  if (value === undefined) return undefined;
  if (value !== 'leaks' && value !== 'all') throw new ImageError('INVALID_ARGUMENT', `-r must be leaks or all, not '${value}'`);
  return value;
}

/**
 * qemu-img check fails when the image's backing chain cannot be opened (missing file, loop).
 * An image too broken to open even without its chain is left to the format's checkFile.
 */
async function requireBackingChain(file: string, format: string): Promise<void> {
  try {
    await (await openImage(file, { format, readOnly: true })).close();
  } catch (err) {
    const alone = await openImage(file, { format, readOnly: true, backingChain: false }).catch(() => undefined);
    if (!alone) return;
    await alone.close();
    throw err;
  }
}

export function register(program: Command): void {
  program
    .command('check')
    .description('check an image for consistency (and repair it with -r)')
    .option('-f <fmt>', 'image format (probed when absent)')
    .option('-r <mode>', 'repair: leaks or all')
    .option('--output <format>', 'human or json', 'human')
    .option('-q, --quiet', 'print nothing')
    .option('-U, --force-share', 'accepted for compatibility (img takes no locks)')
    .argument('<file>')
    .action(
      action(1, async ({ opts, args }) => {
        const output = outputFormat(opts.output);
        const repair = repairMode(opts.r);
        const format = findFormat(formatArg(opts.f) ?? (await probeFormat(args[0])));
        // A format that checks the file itself also handles images too broken to open.
        if (format.checkFile) await requireBackingChain(args[0], format.name);
        let image: Image | undefined;
        const runCheck = async (r?: RepairMode): Promise<CheckReport | undefined> => {
          if (format.checkFile) return format.checkFile(args[0], { repair: r });
          image ??= await openImage(args[0], { format: format.name, readOnly: !repair, backingChain: false });
          return image.check?.({ repair: r });
        };
        try {
          let report = await runCheck(repair);
          if (!report) {
            process.stderr.write(`img: ${args[0]}: the ${format.name} format does not support checks\n`);
            return CHECK_UNSUPPORTED;
          }
          for (const line of report.messages) process.stderr.write(`${line}\n`);
          if (repair && (report.leaksFixed || report.corruptionsFixed)) {
            if (output === 'human') {
              say(
                opts,
                `The following inconsistencies were found and repaired:\n\n    ${report.leaksFixed} leaked clusters\n    ${report.corruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n`,
              );
            }
            const fixed = report;
            report = { ...(await runCheck())!, leaksFixed: fixed.leaksFixed, corruptionsFixed: fixed.corruptionsFixed };
          }
          if (output === 'json') process.stdout.write(qjson(checkJson(report)) + '\n');
          else say(opts, checkHuman(report));
          return checkStatus(report);
        } finally {
          await image?.close();
        }
      }),
    );
}
