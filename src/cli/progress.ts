/**
 * Progress for -p: a bar redrawn in place on a terminal, or — when stderr is not a terminal,
 * i.e. a program is reading it — one JSON line per whole percent: {"progress": 42}.
 */
const BAR_WIDTH = 40;

export type ProgressFn = (done: number, total: number) => void;

export interface ProgressReporter {
  update: ProgressFn;
  /** Shows 100% and ends the bar's line. */
  finish(): void;
  /** Ends the bar's line where it is (before an error message). */
  abandon(): void;
}

export function progressReporter(stream: NodeJS.WriteStream = process.stderr): ProgressReporter {
  let lastShown = -1;
  const tty = stream.isTTY;
  const update: ProgressFn = (done, total) => {
    const percent = total > 0 ? (done * 100) / total : 100;
    const shown = tty ? Math.floor(percent * 10) / 10 : Math.floor(percent);
    if (shown === lastShown) return;
    lastShown = shown;
    if (!tty) {
      stream.write(`${JSON.stringify({ progress: shown })}\n`);
      return;
    }
    const filled = Math.round((percent / 100) * BAR_WIDTH);
    stream.write(`\r[${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${shown.toFixed(1).padStart(5)}%`);
  };
  const endLine = () => {
    if (tty && lastShown >= 0) stream.write('\n');
  };
  return {
    update,
    finish() {
      update(1, 1);
      endLine();
    },
    abandon: endLine,
  };
}
