#!/usr/bin/env python
# RabbitMQ tutorial 1, "Hello World!": the consumer, as published for pika 1.x
# (https://www.rabbitmq.com/tutorials/tutorial-one-python). Only change: the broker host is
# $AMQP_HOST when set (the interop tests use 127.0.0.1), `localhost` otherwise.
import os
import sys

import pika


def main():
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(host=os.environ.get('AMQP_HOST', 'localhost')))
    channel = connection.channel()

    channel.queue_declare(queue='hello')

    def callback(ch, method, properties, body):
        print(f" [x] Received {body}", flush=True)

    channel.basic_consume(queue='hello', on_message_callback=callback, auto_ack=True)

    print(' [*] Waiting for messages. To exit press CTRL+C', flush=True)
    channel.start_consuming()


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        print('Interrupted', flush=True)
        try:
            sys.exit(0)
        except SystemExit:
            os._exit(0)
