// What the system says about a process: used by the state-directory lock and
// by `cluster down`, which both must tell a live holder from a dead one, a
// zombie nobody reaped (containers without an init do not reap), or a reused
// pid.
import fs from 'node:fs';

/**
 * `{alive, starttime, cmdline}` for a pid, or null when there is no such
 * process. Zombies count as not alive. Without /proc (not Linux) only
 * liveness is known.
 */
export function procInfo(pid) {
  if (!Number.isInteger(pid) || pid <= 0) return null;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    let cmdline = '';
    try {
      cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
    } catch {
      /* gone meanwhile */
    }
    return { alive: fields[0] !== 'Z' && fields[0] !== 'X', starttime: fields[19], cmdline };
  } catch {
    if (fs.existsSync('/proc/self/stat')) return null;
  }
  try {
    process.kill(pid, 0);
    return { alive: true, starttime: undefined, cmdline: undefined };
  } catch (e) {
    return e.code === 'EPERM' ? { alive: true, starttime: undefined, cmdline: undefined } : null;
  }
}

/**
 * true while `rec` ({pid, starttime?, match?: strings its command line
 * holds}) still names the process it was taken from: alive (not a zombie),
 * the same start time, the same command line. A later process given the
 * same pid does not count.
 */
export function isRunning(rec) {
  if (!rec?.pid) return false;
  const info = procInfo(rec.pid);
  if (!info?.alive) return false;
  if (rec.starttime && info.starttime && rec.starttime !== info.starttime) return false;
  if (info.cmdline !== undefined) return (rec.match ?? []).every((m) => info.cmdline.includes(m));
  return true;
}
