import { sendMessageWaitForResponse } from '/__realtime__/client.js';
import { version } from '/virtual/version.js';

document.getElementById('version').textContent = `Realtime.Server ${version}`;
const { greeting } = await sendMessageWaitForResponse({ type: 'hello', name: 'browser' }, { timeout: 5000 });
document.getElementById('greeting').textContent = greeting;
