#!/usr/bin/env python
# RabbitMQ tutorial 1, "Hello World!": the producer, as published for pika 1.x
# (https://www.rabbitmq.com/tutorials/tutorial-one-python). Only change: the broker host is
# $AMQP_HOST when set (the interop tests use 127.0.0.1), `localhost` otherwise.
import os

import pika

connection = pika.BlockingConnection(
    pika.ConnectionParameters(host=os.environ.get('AMQP_HOST', 'localhost')))
channel = connection.channel()

channel.queue_declare(queue='hello')

channel.basic_publish(exchange='', routing_key='hello', body='Hello World!')
print(" [x] Sent 'Hello World!'", flush=True)
connection.close()
