/** The console's entry point: mounts the app on #app. */
import { h, render } from 'preact';
import { App } from './app.js';

const root = document.getElementById('app');
if (root) render(h(App, null), root);
