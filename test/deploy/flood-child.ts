/**
 * The attacker of enroll-flood.test.ts, in a process of its own (so that the
 * flood's pace does not depend on the server's event loop): one MQTT
 * connection per device certificate, each publishing its junk enrollments
 * round robin on its own enroll topic at QoS 1, until stdin closes or the
 * count is reached. Prints the running total of broker-acknowledged publishes.
 * argv[2]: JSON { url, max, flooders: [{ id, ca, cert, key, junk: string[] }] } (paths for ca/cert/key).
 */
import { readFileSync } from 'node:fs';
import mqtt from 'mqtt';

interface Flooder {
  id: string;
  ca: string;
  cert: string;
  key: string;
  junk: string[];
}

const spec = JSON.parse(readFileSync(process.argv[2] as string, 'utf8')) as { url: string; max: number; flooders: Flooder[] };
let stop = false;
let published = 0;
process.stdin.on('end', () => (stop = true));
process.stdin.resume();

const report = setInterval(() => process.stdout.write(`${published}\n`), 100);
await Promise.all(
  spec.flooders.map(async (f) => {
    const client = await mqtt.connectAsync(spec.url, {
      ca: readFileSync(f.ca),
      cert: readFileSync(f.cert),
      key: readFileSync(f.key),
      clientId: f.id,
      clean: true,
      reconnectPeriod: 0,
    });
    const window: Promise<unknown>[] = [];
    for (let i = 0; !stop && i < spec.max; i++) {
      window.push(client.publishAsync(`provision/${f.id}/enroll`, f.junk[i % f.junk.length] as string, { qos: 1 }).then(() => published++));
      if (window.length >= 100) await Promise.all(window.splice(0));
    }
    await Promise.all(window);
    await client.endAsync();
  }),
);
clearInterval(report);
process.stdout.write(`${published}\ndone\n`);
